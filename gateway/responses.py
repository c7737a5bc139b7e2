"""Bytes the gateway writes itself: status lines, the Date header and JSON error bodies."""

from __future__ import annotations

import json
from email.utils import formatdate
from http import HTTPStatus

STATUS_LINES: dict[int, bytes] = {
    int(status): f"HTTP/1.1 {int(status)} {status.phrase}\r\n".encode() for status in HTTPStatus
}

JSON_CONTENT_TYPE = b"content-type: application/json\r\n"
CONNECTION_CLOSE = b"connection: close\r\n"
CONNECTION_KEEP_ALIVE = b"connection: keep-alive\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} Unknown\r\n".encode()
    return line


def error_body(code: str, message: str, limit: str | None = None) -> bytes:
    """Azure's error shape; a 429 also says which ``limit`` was hit."""
    error = {"code": code, "message": message}
    if limit is not None:
        error["limit"] = limit
    return json.dumps({"error": error}).encode()


def health_body(status: str, message: str) -> bytes:
    """The health path's answer while the gateway is in rotation."""
    return json.dumps({"status": status, "message": message}).encode()


def model_error_body(deployment: str) -> bytes:
    """What a client sees when the model failed: never the instance's own body."""
    return error_body("ModelError", f"the model's run() failed; see get-logs for deployment {deployment}")


class DateHeader:
    """The ``date`` header line, rebuilt at most once a second instead of per response."""

    __slots__ = ("line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self.line = b""

    def refresh(self, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._second = second
            self.line = b"date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
