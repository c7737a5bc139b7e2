"""Access log: the event loop appends a tuple; a thread formats JSON lines and writes them.

Formatting and file writes never run on the event loop. Entries carry no key and no
Authorization header: the proxy never passes them in.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import IO, Any, NamedTuple

import structlog

FLUSH_INTERVAL_S = 0.2
MAX_BACKLOG = 200_000  # entries held while the file cannot be written
YIELD_EVERY = 128  # entries formatted between two releases of the GIL


class AccessEntry(NamedTuple):
    """One request's record. The proxy records plain tuples in this field order."""

    time: float  # wall clock, seconds since the epoch
    method: bytes
    path: bytes
    endpoint: str | None
    deployment: str | None
    instance: str | None
    status: int
    code: str | None  # the gateway's own error code when it answered itself
    latency_ms: float
    bytes_in: int  # request body bytes
    bytes_out: int  # response body bytes
    request_id: str | None


def _quote(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


class _Clock:
    """ISO-8601 UTC time with milliseconds; the seconds part is formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def iso(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((when - second) * 1000):03d}Z"


def format_entry(entry: tuple[Any, ...], clock: _Clock) -> str:
    """One JSON line (no newline) for an ``AccessEntry``-shaped tuple."""
    (
        when,
        method,
        path,
        endpoint,
        deployment,
        instance,
        status,
        code,
        latency_ms,
        bytes_in,
        bytes_out,
        request_id,
    ) = entry
    return (
        f'{{"time":"{clock.iso(when)}","method":{_quote(method.decode("latin-1"))},'
        f'"path":{_quote(path.decode("latin-1"))},"endpoint":{_quote(endpoint)},'
        f'"deployment":{_quote(deployment)},"instance":{_quote(instance)},'
        f'"status":{status},"code":{_quote(code)},"latency_ms":{latency_ms:.3f},'
        f'"bytes_in":{bytes_in},"bytes_out":{bytes_out},"request_id":{_quote(request_id)}}}'
    )


_EVENT_TAIL = ',"event":"access","level":"info","logger":"gateway.access"}'


class AccessLog:
    """Buffered JSON-lines access log written by a daemon thread.

    ``record`` is a deque append (thread-safe, no formatting). Each entry also goes to the
    structlog stream as an ``access`` event at level info (nothing when the level is above
    info). When that stream is not a terminal (structlog renders JSON) the thread writes
    the JSON lines itself, in one write per flush: structlog's processor chain per event
    would cost the gateway about half its throughput. On a terminal each entry goes through
    structlog, for its console renderer.
    """

    def __init__(self, path: Path, *, stream: IO[str] | None = None) -> None:
        self._path = path
        # Bounded so a log that cannot be written costs memory only up to a point (the
        # oldest entries go first); at 40k requests/s this is several seconds of backlog.
        self._queue: deque[tuple[Any, ...]] = deque(maxlen=MAX_BACKLOG)
        self._wake = threading.Event()
        self._stop = False
        self._log = structlog.get_logger("gateway.access")
        self._thread: threading.Thread | None = None
        self._clock = _Clock()
        self._stream = stream if stream is not None else sys.stderr
        self.record = self._queue.append

    def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Flush what is queued and stop the thread (blocks briefly; call off the hot path)."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        out: IO[str] | None = None
        failed = False
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            try:
                if out is None:
                    out = open(self._path, "a", encoding="utf-8")
                self._drain(out)
                failed = False
            except OSError as exc:  # disk full, permissions: keep serving, say so once
                if not failed:
                    self._log.error("access_log.write_failed", path=str(self._path), error=str(exc))
                failed = True
                if out is not None:
                    with contextlib.suppress(OSError):
                        out.close()
                    out = None
            if self._stop:
                if out is not None:
                    with contextlib.suppress(OSError):
                        self._drain(out)
                        out.close()
                return

    def _drain(self, out: IO[str]) -> None:
        """Format and write every queued entry (a write error leaves the rest queued)."""
        queue = self._queue
        clock = self._clock
        lines: list[str] = []
        echoed: list[str] = []
        stream = self._stream
        info = None
        echo = self._log.is_enabled_for(logging.INFO)
        if echo and stream.isatty():
            info, echo = self._log.info, False
        count = 0
        while True:
            try:
                entry = queue.popleft()
            except IndexError:
                break
            count += 1
            if count % YIELD_EVERY == 0:
                # Hand the GIL back to the event loop: held for the interpreter's whole
                # switch interval (5 ms) it would stall requests, and show in their p99.
                time.sleep(0)
            line = format_entry(entry, clock)
            lines.append(line)
            if echo:
                echoed.append(f'{line[:-1]},"timestamp":"{clock.iso(entry[0])}"{_EVENT_TAIL}')
            elif info is not None:
                info("access", **_fields(entry, clock))
        if lines:
            lines.append("")
            out.write("\n".join(lines))
            out.flush()
        if echoed:
            echoed.append("")
            try:
                stream.write("\n".join(echoed))
                stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: the file still has them
                pass


def _fields(entry: tuple[Any, ...], clock: _Clock) -> dict[str, Any]:
    fields = AccessEntry(*entry)._asdict()
    fields["time"] = clock.iso(entry[0])
    fields["method"] = entry[1].decode("latin-1")
    fields["path"] = entry[2].decode("latin-1")
    fields["latency_ms"] = round(entry[8], 3)
    return fields
