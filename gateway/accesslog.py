"""Access log: one JSON line per request, formatted on the event loop, written by a thread.

The line is formatted where the request ends (about 1 µs, measured) and queued; a daemon
thread writes the queue out every ``FLUSH_INTERVAL_S``. Formatting in the thread instead
cost the gateway about 6 µs per request (measured with ``bench/gateway.py``): the thread
and the event loop hand the GIL back and forth thousands of times a second. Writes never
run on the event loop. Entries carry no key and no Authorization header: the proxy never
passes them in. Each flush is one ``write`` on an ``O_APPEND`` descriptor, so several
gateway processes can share the file without interleaving lines (Linux holds the file lock
for a regular file's whole write).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections import deque
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import IO, Any, BinaryIO, NamedTuple

import structlog

FLUSH_INTERVAL_S = 0.2
MAX_BACKLOG = 200_000  # entries held while the file cannot be written


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

    def prefix(self, second: int) -> str:
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix


_LINE = (
    '{"time":"%s.%03dZ","method":%s,"path":%s,"endpoint":%s,"deployment":%s,"instance":%s,'
    '"status":%d,"code":%s,"latency_ms":%.3f,"bytes_in":%d,"bytes_out":%d,"request_id":%s}'
)
_QUOTED_MAX = 4096
# JSON forms of the values that repeat (methods, paths, names, codes), made once each.
_quoted: dict[object, str] = {None: "null"}


def _quoted_value(value: str | bytes | None) -> str:
    found = _quoted.get(value)
    if found is None:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        found = encode_basestring(text)
        if len(_quoted) >= _QUOTED_MAX:  # client-chosen paths must not grow it for ever
            _quoted.clear()
            _quoted[None] = "null"
        _quoted[value] = found
    return found


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
    second = int(when)
    return _LINE % (
        clock.prefix(second),
        int((when - second) * 1000),
        _quoted_value(method),
        _quoted_value(path),
        _quoted_value(endpoint),
        _quoted_value(deployment),
        _quoted_value(instance),
        status,
        _quoted_value(code),
        latency_ms,
        bytes_in,
        bytes_out,
        "null" if request_id is None else encode_basestring(request_id),
    )


_EVENT_TAIL = ',"event":"access","level":"info","logger":"gateway.access"}'


class AccessLog:
    """JSON-lines access log: ``record`` formats, a daemon thread writes.

    Each entry also goes to the structlog stream as an ``access`` event at level info
    (nothing when the level is above info). When that stream is not a terminal (structlog
    renders JSON) the thread writes the JSON lines itself, in one write per flush:
    structlog's processor chain per event would cost the gateway about half its
    throughput. On a terminal each entry goes through structlog, for its console renderer.
    """

    def __init__(self, path: Path, *, stream: IO[str] | None = None) -> None:
        self._path = path
        # Bounded so a log that cannot be written costs memory only up to a point (the
        # oldest lines go first); at 40k requests/s this is several seconds of backlog.
        self._queue: deque[str] = deque(maxlen=MAX_BACKLOG)
        self._wake = threading.Event()
        self._stop = False
        self._log = structlog.get_logger("gateway.access")
        self._thread: threading.Thread | None = None
        self._clock = _Clock()  # used on the recording thread only
        self._stream = stream if stream is not None else sys.stderr

    def record(self, entry: tuple[Any, ...]) -> None:
        """Queue one ``AccessEntry``-shaped tuple (formatted here, written later)."""
        self._queue.append(format_entry(entry, self._clock))

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
        out: BinaryIO | None = None
        failed = False
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            try:
                if out is None:
                    out = open(self._path, "ab", buffering=0)
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

    def _drain(self, out: BinaryIO) -> None:
        """Write every queued line (lines taken before a write error are lost)."""
        queue = self._queue
        popleft = queue.popleft
        lines: list[str] = []
        append = lines.append
        try:
            for _ in range(len(queue)):
                append(popleft())
        except IndexError:
            pass
        if not lines:
            return
        stream = self._stream
        echo = self._log.is_enabled_for(logging.INFO)
        if echo and stream.isatty():
            info = self._log.info
            for line in lines:
                info("access", **json.loads(line))
            echo = False
        lines.append("")
        data = memoryview("\n".join(lines).encode())
        while data:
            written = out.write(data) or 0
            data = data[written:]
        if echo:
            # The time is at a fixed place in the line: '{"time":"' then 24 characters.
            echoed = [f'{line[:-1]},"timestamp":"{line[9:33]}"{_EVENT_TAIL}' for line in lines[:-1]]
            echoed.append("")
            try:
                stream.write("\n".join(echoed))
                stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: the file still has them
                pass
