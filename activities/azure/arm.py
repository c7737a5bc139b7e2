"""What every azure provider shares about ARM: clients pointed where the settings say, the
errors retrying cannot fix, and long-running operations that survive a retried activity.

A long-running operation heartbeats its poller's continuation token; the next attempt of the
same activity finds it in its heartbeat details and resumes polling that very operation
instead of starting another. Throttling (429 with Retry-After) and transient 5xx are the
SDK's retry policy's; what is left is either permanent (a non-retryable ApplicationError with
Azure's message) or the activity's retry policy's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.polling import AsyncLROPoller
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from config.settings import Settings

log = structlog.get_logger("activities.azure.arm")

# Errors that retrying cannot fix: the activity fails with Azure's own message.
PERMANENT_ERRORS = frozenset(
    {
        "QuotaExceeded",
        "SkuNotAvailable",
        "AllocationFailed",
        # Network: a region's public IP quota, a DNS label someone else holds, a bad label.
        "PublicIPCountLimitReached",
        "DnsRecordInUse",
        "InvalidDomainNameLabel",
    }
)
# A long-running operation's heartbeat, at most this far apart (the poller waits in between).
HEARTBEAT_SECONDS = 5.0

T = TypeVar("T")


class ResumeToken(BaseModel):
    """What a long-running activity heartbeats: enough to resume the very same operation."""

    operation: str
    resource: str
    token: str


def require_settings(settings: Settings, provider: str, names: tuple[str, ...]) -> None:
    """Refuse to start a provider without the settings it needs, naming their variables."""
    missing = [f"TIDEGATE_{name.upper()}" for name in names if not getattr(settings, name)]
    if missing:
        from activities.azure.scale_sets import AzureSettingsMissing

        raise AzureSettingsMissing(f"the azure {provider} provider needs {', '.join(missing)}")


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for an azure-mgmt client: ARM's URL and CA when tests set them."""
    options: dict[str, Any] = {}
    if settings.azure_arm_url:
        options["base_url"] = settings.azure_arm_url
    if settings.azure_ca_file:
        options["connection_verify"] = str(settings.azure_ca_file)
    return options


def permanent_failure(err: HttpResponseError, what: str) -> ApplicationError | None:
    """The non-retryable error for what retrying cannot fix, else None (the retry policy's)."""
    code = err.error.code if err.error is not None else None
    if code in PERMANENT_ERRORS:
        message = err.error.message if err.error is not None else str(err)
        return ApplicationError(f"Azure refused {what}: {code}: {message}", type=code, non_retryable=True)
    return None


def resume_token(operation: str, resource: str) -> str | None:
    """The continuation token a previous attempt of this activity heartbeat for this
    operation on this resource, if any."""
    if not activity.in_activity():
        return None
    details = activity.info().heartbeat_details
    if not details:
        return None
    try:
        saved = ResumeToken.model_validate(details[-1])
    except ValueError:
        return None
    if (saved.operation, saved.resource) != (operation, resource):
        return None
    return saved.token


async def long_running(
    operation: str,
    resource: str,
    what: str,
    start: Callable[[str | None], Awaitable[AsyncLROPoller[T]]],
    *,
    resume: bool = True,
) -> T:
    """Start (or, on a retried activity, resume) an operation and wait for its end,
    heartbeating the continuation token so the next attempt resumes it too. `what` names the
    resource in a permanent failure's message ("public IP tg-ep1"). `resume=False`: a new
    operation even so (the caller saw the previous attempt's through already)."""
    token = resume_token(operation, resource) if resume else None
    if token is not None:
        log.info("azure.operation.resumed", operation=operation, resource=resource)
    try:
        poller = await start(token)
        saved = ResumeToken(operation=operation, resource=resource, token=poller.continuation_token())
        waiting = asyncio.ensure_future(poller.result())
        try:
            while True:
                if activity.in_activity():
                    activity.heartbeat(saved.model_dump())
                done, _ = await asyncio.wait({waiting}, timeout=HEARTBEAT_SECONDS)
                if done:
                    return waiting.result()
        finally:
            if not waiting.done():
                waiting.cancel()  # the activity was cancelled; the operation goes on in Azure
    except ResourceNotFoundError:
        raise
    except HttpResponseError as err:
        failure = permanent_failure(err, what)
        if failure is not None:
            log.warning("azure.operation.failed", operation=operation, resource=resource, error=str(failure))
            raise failure from None
        raise
