"""Errors the façade raises; the CLI and REST API map them to exit codes and statuses."""

from __future__ import annotations


class TidegateError(Exception):
    """A failure a user can act on; the message names the thing at fault."""

    code = "Error"
    status = 500


class BadRequest(TidegateError):
    code = "BadRequest"
    status = 400


class NotFound(TidegateError):
    code = "NotFound"
    status = 404


class Conflict(TidegateError):
    code = "Conflict"
    status = 409


class OperationFailed(TidegateError):
    code = "OperationFailed"
    status = 500
