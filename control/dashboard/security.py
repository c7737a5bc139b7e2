"""The dashboard's guards: which requests are its pages, same-origin sessions, the CSRF token
(derived from the session, so nothing is stored) and the headers every page carries."""

from __future__ import annotations

import base64
import hashlib
import hmac

from aiohttp import web

PREFIX = "/ui"
API_PREFIX = f"{PREFIX}/api/"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

# No inline script or style; scripts, styles and fetches from this origin only; forms post here.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def is_dashboard(path: str) -> bool:
    return path == PREFIX or path.startswith(f"{PREFIX}/")


def is_page(request: web.Request) -> bool:
    """A dashboard page a browser navigates to: redirected to the login form when signed out
    (the dashboard's JSON answers 401 like the rest of the API)."""
    return (
        request.method in ("GET", "HEAD")
        and is_dashboard(request.path)
        and not request.path.startswith(API_PREFIX)
    )


def same_origin(request: web.Request) -> bool:
    """A browser's request from the API's own pages: a navigation or same-origin GET sends no
    Origin, anything else sends the API's own (the cookie is SameSite=Strict as well)."""
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


class Csrf:
    """``csrf_token(session)``: an HMAC of the session value under a key derived from the
    credential; a new session or a new credential makes every old token useless."""

    def __init__(self, credential: str) -> None:
        self._key = hmac.new(credential.encode(), b"tidegate dashboard csrf v1", hashlib.sha256).digest()

    def token(self, session: str) -> str:
        digest = hmac.new(self._key, session.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def valid(self, session: str | None, given: str | None) -> bool:
        if not session or not given:
            return False
        return hmac.compare_digest(given.encode(), self.token(session).encode())


def protect(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Not "no-referrer": under it a browser sends "Origin: null" on the page's own form posts.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response
