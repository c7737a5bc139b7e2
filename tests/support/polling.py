"""Polling a condition in the end-to-end tests: bounded by a count, never by a clock."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


def until(predicate: Callable[[], object], what: str, polls: int = 1800, every: float = 0.1) -> None:
    """Poll a condition; the bound only keeps a broken build from hanging CI."""
    for _ in range(polls):
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"never: {what}")


async def eventually(
    predicate: Callable[[], object | Awaitable[object]], what: str, polls: int = 1200, every: float = 0.05
) -> None:
    """The async twin of `until`: poll a condition (sync or async), bounded by a count."""
    for _ in range(polls):
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        await asyncio.sleep(every)
    raise AssertionError(f"never: {what}")
