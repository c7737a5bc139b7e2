"""Access log: one JSON line per request, formatted on the event loop, written by a thread.

The line is formatted where the request ends (about 1 µs, measured) and queued; a daemon
thread writes the queue out every ``FLUSH_INTERVAL_S``. Formatting in the thread instead
cost the gateway about 6 µs per request (measured with ``bench/gateway.py``): the thread
and the event loop hand the GIL back and forth thousands of times a second. Writes never
run on the event loop. Entries carry no key and no Authorization header: the proxy never
passes them in. Each flush is one ``write`` per file on an ``O_APPEND`` descriptor, so
several gateway processes can share the file without interleaving lines (Linux holds the
file lock for a regular file's whole write).

A flood of requests must not fill the disk: a client-chosen path is cut to
``MAX_PATH_CHARS`` (with a marker saying how much was cut; a request id is at most 100
characters already), and the file is rotated by size (``access.log`` → ``access.log.1`` …,
``backups`` kept). The size check, the rotation and the write happen under a lock file
(``.access.log.lock``), so the gateway processes sharing the file rotate it once, and every
file stays within ``max_bytes``. The lines go to this file only, unless ``echo`` (not
rotated) is asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
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
MAX_PATH_CHARS = 256  # of a logged path; the rest is replaced by a marker
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_BACKUPS = 5


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


def logged_path(path: bytes) -> bytes:
    """The path as logged: at most ``MAX_PATH_CHARS`` of it, then how much was cut."""
    if len(path) <= MAX_PATH_CHARS:
        return path
    return path[:MAX_PATH_CHARS] + b"...[%d more bytes]" % (len(path) - MAX_PATH_CHARS)


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
        _quoted_value(path if len(path) <= MAX_PATH_CHARS else logged_path(path)),
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


class RotatingFile:
    """An append-only file rotated by size, safe to share between processes: each write
    takes ``.<name>.lock``, follows a rotation another process made, and moves the file to
    ``<name>.1`` (… ``<name>.<backups>``, the oldest dropped) before a line would take it
    past ``max_bytes``. Used by the log thread only."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        if max_bytes <= 0 or backups < 0:
            raise ValueError("max_bytes must be > 0 and backups >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._lock_fd: int | None = None

    def write(self, data: bytes) -> None:
        """Append ``data``, whole lines ending in a newline, each line into one file."""
        if self._lock_fd is None:
            lock = self.path.with_name(f".{self.path.name}.lock")
            self._lock_fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._write_locked(data)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _write_locked(self, data: bytes) -> None:
        offset, total = 0, len(data)
        while offset < total:
            fd = self._current()
            size = os.fstat(fd).st_size
            room = self.max_bytes - size
            if total - offset <= room:
                end = total
            else:
                end = data.rfind(b"\n", offset, offset + max(room, 0)) + 1
                if end <= offset:  # not even the next line fits
                    if size:
                        self._rotate()
                        continue
                    # One line longer than max_bytes (not made by format_entry): alone in its file.
                    end = data.find(b"\n", offset) + 1 or total
            view = memoryview(data)[offset:end]
            while view:
                view = view[os.write(fd, view) :]
            offset = end

    def _current(self) -> int:
        """The descriptor of the file now at ``path`` (reopened after another's rotation)."""
        fd = self._fd
        if fd is not None:
            try:
                here = os.stat(self.path)
            except FileNotFoundError:
                here = None
            mine = os.fstat(fd)
            if here is not None and (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev):
                return fd
            self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self._fd

    def _rotate(self) -> None:
        base = str(self.path)
        if self.backups:
            for index in range(self.backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{base}.{index}", f"{base}.{index + 1}")
            os.replace(base, f"{base}.1")
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base)
        self.close()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def release(self) -> None:
        """Close the file and the lock file (the log is stopping)."""
        self.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class AccessLog:
    """JSON-lines access log: ``record`` formats, a daemon thread writes and rotates.

    Each line is written once, to the file. With ``echo`` it also goes to the structlog
    stream as an ``access`` event at level info (nothing when the level is above info):
    on a terminal through structlog, for its console renderer; otherwise the thread writes
    the JSON lines itself, in one write per flush (structlog's processor chain per event
    would cost the gateway about half its throughput). That stream is not rotated, so echo
    is off unless asked for (``TIDEGATE_GATEWAY_ACCESS_LOG_ECHO``).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        echo: bool = False,
        stream: IO[str] | None = None,
    ) -> None:
        self._path = path
        self._file = RotatingFile(path, max_bytes=max_bytes, backups=backups)
        # Bounded so a log that cannot be written costs memory only up to a point (the
        # oldest lines go first); at 40k requests/s this is several seconds of backlog.
        self._queue: deque[str] = deque(maxlen=MAX_BACKLOG)
        self._wake = threading.Event()
        self._stop = False
        self._log = structlog.get_logger("gateway.access")
        self._thread: threading.Thread | None = None
        self._clock = _Clock()  # used on the recording thread only
        self._echo = echo
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
        failed = False
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            try:
                self._drain()
                failed = False
            except OSError as exc:  # disk full, permissions: keep serving, say so once
                if not failed:
                    self._log.error("access_log.write_failed", path=str(self._path), error=str(exc))
                failed = True
                self._file.close()
            if self._stop:
                with contextlib.suppress(OSError):
                    self._drain()
                self._file.release()
                return

    def _drain(self) -> None:
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
        echo = self._echo and self._log.is_enabled_for(logging.INFO)
        stream = self._stream
        if echo and stream.isatty():
            info = self._log.info
            for line in lines:
                info("access", **json.loads(line))
            echo = False
        lines.append("")
        self._file.write("\n".join(lines).encode())
        if echo:
            # The time is at a fixed place in the line: '{"time":"' then 24 characters.
            echoed = [f'{line[:-1]},"timestamp":"{line[9:33]}"{_EVENT_TAIL}' for line in lines[:-1]]
            echoed.append("")
            try:
                stream.write("\n".join(echoed))
                stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: the file still has them
                pass


def find_request(path: Path, backups: int, request_id: str) -> list[dict[str, Any]]:
    """The access-log lines of ``request_id`` (normally one; a client may reuse an id), oldest
    first, across ``path`` and its rotated files. Reads every file a line at a time: for a
    person looking one request up, not for a hot path."""
    quoted = encode_basestring(request_id)  # as the id appears inside a line
    found: list[dict[str, Any]] = []
    files = [path.with_name(f"{path.name}.{n}") for n in range(backups, 0, -1)] + [path]
    for file in files:
        try:
            f = open(file, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        with f:
            for line in f:
                if quoted not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:  # a line cut by a crash mid-write
                    continue
                if isinstance(entry, dict) and entry.get("request_id") == request_id:
                    found.append(entry)
    return found
