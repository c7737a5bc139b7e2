"""Defaults written once: Azure's request settings and Tidegate's payload limit.

The deployment spec, the workflows' state, the route table and settings take them from here
(the gateway should too).
"""

from __future__ import annotations

from typing import Final

# Azure's `request_settings` defaults.
DEFAULT_REQUEST_TIMEOUT_MS: Final = 5000
DEFAULT_MAX_CONCURRENT_REQUESTS_PER_INSTANCE: Final = 1
DEFAULT_MAX_QUEUE_WAIT_MS: Final = 500

# The largest request body an endpoint takes unless its properties say otherwise
# (TIDEGATE_MAX_REQUEST_BYTES; Azure documents none).
DEFAULT_MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024
