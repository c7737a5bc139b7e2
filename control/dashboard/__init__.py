"""The web dashboard `tidegate api` serves under ``/ui/``: endpoints, an endpoint's traffic and
deployments, a rollout with its gates and steering buttons. See ``views`` for the routes."""

from control.dashboard.security import PREFIX
from control.dashboard.views import add_routes

__all__ = ["PREFIX", "add_routes"]
