"""Errors the host API maps to status codes and JSON bodies."""

from __future__ import annotations


class HostError(Exception):
    """A failure the caller can act on; the API renders it as ``{"error": {code, message}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str, *, code: str = "InvalidRequest") -> HostError:
    return HostError(400, code, message)


def not_found(message: str, *, code: str = "NotFound") -> HostError:
    return HostError(404, code, message)
