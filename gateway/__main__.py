"""``python -m gateway``: run the data-plane gateway with settings from the environment."""

from __future__ import annotations

import os
import sys

import structlog

from config.logging import configure_logging
from config.security import ControlAccessError
from config.settings import load_settings
from gateway.server import run


def main() -> int:
    configure_logging(level=os.environ.get("TIDEGATE_LOG_LEVEL", "INFO"))
    try:
        run(load_settings())
    except ControlAccessError as exc:  # e.g. the admin API bound beyond loopback without TLS
        structlog.get_logger("gateway").error("gateway.refused", error=str(exc))
        return 2
    except OSError as exc:  # typically a port already in use
        structlog.get_logger("gateway").error("gateway.failed", error=str(exc))
        return 1
    except ValueError as exc:  # a bad setting (TIDEGATE_GATEWAY_WORKERS, …) or TIDEGATE_GATEWAY_DISABLE
        structlog.get_logger("gateway").error("gateway.bad_setting", error=str(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
