"""Failures a user can act on, raised by the façade and the providers; the CLI prints each as
one `ERROR:` line naming the thing at fault."""

from __future__ import annotations


class TidegateError(Exception):
    """A failure a user can act on; the message names the thing at fault."""


class BadRequest(TidegateError):
    pass


class NotFound(TidegateError):
    pass


class Conflict(TidegateError):
    pass


class PreconditionFailed(TidegateError):
    """The resource is no longer what the caller read (a stale etag)."""


class OperationFailed(TidegateError):
    pass
