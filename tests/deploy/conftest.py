"""The gateway fixtures (a real gateway process, small backends, an HTTP client), shared with
tests/gateway."""

from tests.gateway.conftest import backends, client, gateway, gateway_home  # noqa: F401
