"""Sliding windows of 1-second buckets: what the monitor activity and Prometheus read.

Per endpoint and per deployment a ``Window`` counts requests by status class and code, 429s
by the limit that refused them (``config.stats.LIMIT_REASONS``), sums latency and queue wait
and keeps their log-bucket histograms, plus the mirror comparisons when the deployment is a
shadow. The proxy records into the current second with list
arithmetic only (no object made per request); once a second the gateway's tick closes the
second, compacting its histograms to the buckets that were hit, into a ring that holds
``HORIZON_S`` seconds (more than ten minutes). Each closed second's request and status counts
are also folded into a per-minute ring of ``MINUTES_KEPT`` minutes (a day, counts only, no
histograms): what availability over the last hour or day is computed from.

Histograms are log-bucketed (the DDSketch mapping): bucket ``i >= 1`` holds values in
``[MIN_MS * GAMMA**(i-1), MIN_MS * GAMMA**i)`` and reports ``MIN_MS * GAMMA**(i-1) * 2*GAMMA/(GAMMA+1)``,
which is within ``ALPHA`` (1 %) of every value in it, so a percentile read from the merged
buckets is within 1 % of the sample at that rank. Bucket 0 holds 0 (and anything below
``MIN_MS``). Windows of several processes merge exactly by adding buckets.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from config.stats import LIMIT_REASONS, STATUS_KEYS, LatencySummary, MinuteCounts, MirrorSummary, WindowStats

HORIZON_S: Final = 660  # seconds kept: ten minutes plus a margin for the longest window asked
MAX_WINDOW_S: Final = 600.0
MINUTES_KEPT: Final = 1440  # a day of per-minute counts

ALPHA: Final = 0.01
GAMMA: Final = (1 + ALPHA) / (1 - ALPHA)
MIN_MS: Final = 0.001  # 1 µs; below it a value counts as 0
MAX_MS: Final = 3_600_000.0  # one hour; above it values share the last bucket
_INV_LOG_GAMMA: Final = 1.0 / math.log(GAMMA)
BUCKETS: Final = int(math.ceil(math.log(MAX_MS / MIN_MS) * _INV_LOG_GAMMA)) + 2
_OFFSET: Final = 1.0 - math.log(MIN_MS) * _INV_LOG_GAMMA
_LAST: Final = BUCKETS - 1
_log = math.log

# What each bucket reports: within ALPHA of every value that falls in it.
BUCKET_VALUE: Final = [0.0] + [MIN_MS * GAMMA ** (i - 1) * 2 * GAMMA / (GAMMA + 1) for i in range(1, BUCKETS)]

# Slots of a second's counter list. The status slots follow config.stats.STATUS_KEYS order.
REQUESTS: Final = 0
_STATUS_FIRST: Final = 1
STATUS_SLOTS: Final = {key: _STATUS_FIRST + i for i, key in enumerate(STATUS_KEYS)}
LATENCY_SUM: Final = _STATUS_FIRST + len(STATUS_KEYS)
QUEUED: Final = LATENCY_SUM + 1  # requests that went through the limiter (waited 0 or more)
QUEUE_SUM: Final = QUEUED + 1
MIRROR_REQUESTS: Final = QUEUE_SUM + 1
MIRROR_COMPARED: Final = MIRROR_REQUESTS + 1
MIRROR_MATCHES: Final = MIRROR_COMPARED + 1
MIRROR_DROPPED: Final = MIRROR_MATCHES + 1
# 429s by reason, in config.stats.LIMIT_REASONS order: a request's ``limited`` names its slot.
_LIMITED_FIRST: Final = MIRROR_DROPPED + 1
LIMIT_SLOTS: Final = {reason: _LIMITED_FIRST + i for i, reason in enumerate(LIMIT_REASONS)}
LIMITED_ENDPOINT_RATE: Final = LIMIT_SLOTS["endpoint_rate"]
LIMITED_INSTANCE_CONCURRENCY: Final = LIMIT_SLOTS["instance_concurrency"]
LIMITED_QUEUE_WAIT: Final = LIMIT_SLOTS["queue_wait"]
LIMITED_MODEL: Final = LIMIT_SLOTS["model"]  # the instance's own 429
# Where statuses outside every key are counted, never read.
_IGNORED: Final = _LIMITED_FIRST + len(LIMIT_REASONS)
SLOTS: Final = _IGNORED + 1
MINUTE_SLOTS: Final = LATENCY_SUM  # what a minute keeps: requests and the status slots


def _status_tables() -> tuple[list[int], list[int]]:
    by_class = [_IGNORED] * 1000
    by_code = [_IGNORED] * 1000
    for status in range(1000):
        klass = f"{status // 100}xx"
        if klass in STATUS_SLOTS:
            by_class[status] = STATUS_SLOTS[klass]
        if str(status) in STATUS_SLOTS:
            by_code[status] = STATUS_SLOTS[str(status)]
    return by_class, by_code


# A status counts in its class ("2xx", "4xx", "5xx") and, when it has a key of its own
# ("408", "424", "429", "503"), there too: the codes are subsets of the classes.
_BY_CLASS, _BY_CODE = _status_tables()


def bucket_of(ms: float) -> int:
    """The histogram bucket of a non-negative value in milliseconds."""
    if ms <= MIN_MS:
        return 0
    index = int(_log(ms) * _INV_LOG_GAMMA + _OFFSET)
    return index if index < BUCKETS else _LAST


def _signed_bucket(ms: float) -> int:
    """Index in a signed histogram (``2 * BUCKETS - 1`` long, 0 at ``_LAST``)."""
    if ms >= 0.0:
        return _LAST + bucket_of(ms)
    return _LAST - bucket_of(-ms)


def _signed_value(index: int) -> float:
    return BUCKET_VALUE[index - _LAST] if index >= _LAST else -BUCKET_VALUE[_LAST - index]


def percentile(histogram: Sequence[int], count: int, q: float, *, signed: bool = False) -> float | None:
    """The nearest-rank ``q`` quantile (the ``ceil(q * count)``-th smallest sample), within
    ALPHA of that sample."""
    if count <= 0:
        return None
    rank = max(0, math.ceil(q * count) - 1)  # 0-based
    seen = 0
    for index, hits in enumerate(histogram):
        if hits:
            seen += hits
            if seen > rank:
                return _signed_value(index) if signed else BUCKET_VALUE[index]
    return None  # count larger than the buckets hold: not reached with consistent data


def _compact(histogram: list[int]) -> tuple[array[int], array[int]]:
    """The buckets that were hit, as two small arrays; zeroes them in ``histogram``."""
    hit = [i for i, v in enumerate(histogram) if v]
    counts = array("I", [histogram[i] for i in hit])
    for i in hit:
        histogram[i] = 0
    return array("H", hit), counts


_NO_BUCKETS: Final = (array("H"), array("I"))


class Window:
    """One endpoint's or deployment's seconds. The proxy writes ``cur``, ``latency``,
    ``queue`` and ``diff`` directly (see ``record``); ``close`` runs once a second."""

    __slots__ = (
        "endpoint",
        "deployment",
        "cur",
        "latency",
        "queue",
        "diff",
        "ring",
        "totals",
        "in_flight",
        "last_data",
        "minutes",
    )

    def __init__(self, endpoint: str, deployment: str) -> None:
        self.endpoint = endpoint
        self.deployment = deployment
        self.cur: list[Any] = [0] * SLOTS
        self.cur[LATENCY_SUM] = 0.0
        self.cur[QUEUE_SUM] = 0.0
        self.latency = [0] * BUCKETS
        self.queue = [0] * BUCKETS
        self.diff = [0] * (2 * BUCKETS - 1)
        self.ring: list[tuple[Any, ...] | None] = [None] * HORIZON_S
        # Counters since start (Prometheus counters): closed seconds folded in at close.
        self.totals: list[Any] = [0] * SLOTS
        self.totals[LATENCY_SUM] = 0.0
        self.in_flight = 0
        self.last_data = -1  # the last second that had any data
        # (minute, counts of the first MINUTE_SLOTS slots), at minute % MINUTES_KEPT.
        self.minutes: list[tuple[int, list[int]] | None] = [None] * MINUTES_KEPT

    # --- hot path ---
    def record(self, status: int, latency_ms: float) -> None:
        """One answered request (cheap: list arithmetic and one log)."""
        cur = self.cur
        cur[REQUESTS] += 1
        cur[_BY_CLASS[status]] += 1
        cur[_BY_CODE[status]] += 1
        cur[LATENCY_SUM] += latency_ms
        if latency_ms > MIN_MS:
            index = int(_log(latency_ms) * _INV_LOG_GAMMA + _OFFSET)
            self.latency[index if index < BUCKETS else _LAST] += 1
        else:
            self.latency[0] += 1

    def record_at(self, status: int, latency_ms: float, bucket: int) -> None:
        """``record`` with the latency's bucket already known (one log for two windows)."""
        cur = self.cur
        cur[REQUESTS] += 1
        cur[_BY_CLASS[status]] += 1
        cur[_BY_CODE[status]] += 1
        cur[LATENCY_SUM] += latency_ms
        self.latency[bucket] += 1

    def record_limited(self, slot: int) -> None:
        """A 429 (already counted by ``record``) under its reason's slot (``LIMIT_SLOTS``)."""
        self.cur[slot] += 1

    def record_no_wait(self) -> None:
        self.cur[QUEUED] += 1
        self.queue[0] += 1

    def record_queue_wait(self, wait_ms: float) -> None:
        cur = self.cur
        cur[QUEUED] += 1
        cur[QUEUE_SUM] += wait_ms
        if wait_ms > MIN_MS:
            index = int(_log(wait_ms) * _INV_LOG_GAMMA + _OFFSET)
            self.queue[index if index < BUCKETS else _LAST] += 1
        else:
            self.queue[0] += 1

    def record_mirror(self, slot: int) -> None:
        self.cur[slot] += 1

    def record_comparison(self, match: bool, diff_ms: float) -> None:
        cur = self.cur
        cur[MIRROR_COMPARED] += 1
        if match:
            cur[MIRROR_MATCHES] += 1
        self.diff[_signed_bucket(diff_ms)] += 1

    # --- once a second ---
    def close(self, second: int) -> None:
        """Seal ``second`` into the ring and start the next one."""
        cur = self.cur
        if any(cur):
            entry = (
                second,
                cur,
                _compact(self.latency) if cur[REQUESTS] else _NO_BUCKETS,
                _compact(self.queue) if cur[QUEUED] else _NO_BUCKETS,
                _compact(self.diff) if cur[MIRROR_COMPARED] else _NO_BUCKETS,
            )
            totals = self.totals
            for slot in range(SLOTS):
                totals[slot] += cur[slot]
            minute = second // 60
            kept = self.minutes[minute % MINUTES_KEPT]
            if kept is None or kept[0] != minute:
                kept = self.minutes[minute % MINUTES_KEPT] = (minute, [0] * MINUTE_SLOTS)
            counts = kept[1]
            for slot in range(MINUTE_SLOTS):
                counts[slot] += cur[slot]
            fresh: list[Any] = [0] * SLOTS
            fresh[LATENCY_SUM] = 0.0
            fresh[QUEUE_SUM] = 0.0
            self.cur = fresh
            self.last_data = second
            self.ring[second % HORIZON_S] = entry
        else:
            self.ring[second % HORIZON_S] = None

    # --- reading ---
    def data(self, seconds: float, now_second: int) -> WindowData:
        """The last ``seconds``: the current (partial) second and the ones before it."""
        span = max(1, min(HORIZON_S - 1, int(math.ceil(seconds))))
        data = WindowData.empty()
        counts = data.counts
        for slot, value in enumerate(self.cur):
            counts[slot] += value
        data.add_dense(data.latency, self.latency)
        data.add_dense(data.queue, self.queue)
        data.add_dense(data.diff, self.diff)
        ring = self.ring
        for second in range(now_second - span + 1, now_second):
            entry = ring[second % HORIZON_S]
            if entry is None or entry[0] != second:
                continue
            for slot, value in enumerate(entry[1]):
                counts[slot] += value
            for target, (hit, hits) in zip((data.latency, data.queue, data.diff), entry[2:], strict=True):
                for index, count in zip(hit, hits, strict=True):
                    target[index] += count
        data.in_flight = self.in_flight
        return data

    def minute_counts(self, count: int, now_second: int) -> dict[int, list[int]]:
        """The last ``count`` minutes' counts by minute (epoch seconds // 60), the current
        minute's with the current (partial) second in it; minutes without data left out."""
        count = max(0, min(MINUTES_KEPT, count))
        if count == 0:
            return {}
        now_minute = now_second // 60
        found: dict[int, list[int]] = {}
        for minute in range(now_minute - count + 1, now_minute + 1):
            kept = self.minutes[minute % MINUTES_KEPT]
            if kept is not None and kept[0] == minute:
                found[minute] = list(kept[1])
        if self.cur[REQUESTS]:
            counts = found.setdefault(now_minute, [0] * MINUTE_SLOTS)
            for slot in range(MINUTE_SLOTS):
                counts[slot] += self.cur[slot]
        return found

    def cumulative(self) -> list[Any]:
        """Counters since the window was made, the current second included."""
        return [a + b for a, b in zip(self.totals, self.cur, strict=True)]


@dataclass
class InstanceLoad:
    """Busy slot-seconds of one instance over a window, and what they are a share of."""

    busy_s: float = 0.0
    covered_s: float = 0.0
    limit: int = 1

    @property
    def utilisation(self) -> float:
        if self.covered_s <= 0 or self.limit <= 0:
            return 0.0
        return self.busy_s / (self.covered_s * self.limit)


@dataclass
class WindowData:
    """A window's sums and histograms: adds up exactly across processes."""

    counts: list[float]
    latency: list[int]
    queue: list[int]
    diff: list[int]
    in_flight: int = 0
    instances: dict[str, InstanceLoad] = field(default_factory=dict)
    minutes: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> WindowData:
        counts: list[float] = [0] * SLOTS
        return cls(counts, [0] * BUCKETS, [0] * BUCKETS, [0] * (2 * BUCKETS - 1))

    @staticmethod
    def add_dense(target: list[int], source: Sequence[int]) -> None:
        for index, count in enumerate(source):
            if count:
                target[index] += count

    def merge(self, other: WindowData) -> None:
        for slot, value in enumerate(other.counts):
            self.counts[slot] += value
        self.add_dense(self.latency, other.latency)
        self.add_dense(self.queue, other.queue)
        self.add_dense(self.diff, other.diff)
        self.in_flight += other.in_flight
        for instance_id, load in other.instances.items():
            mine = self.instances.get(instance_id)
            if mine is None:
                self.instances[instance_id] = InstanceLoad(load.busy_s, load.covered_s, load.limit)
            else:
                mine.busy_s += load.busy_s
                mine.covered_s = max(mine.covered_s, load.covered_s)
        for minute, counts in other.minutes.items():
            kept = self.minutes.setdefault(minute, [0] * MINUTE_SLOTS)
            for slot, value in enumerate(counts[:MINUTE_SLOTS]):
                kept[slot] += value

    # --- the wire form between gateway processes (sparse histograms) ---
    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "latency": _sparse(self.latency),
            "queue": _sparse(self.queue),
            "diff": _sparse(self.diff),
            "in_flight": self.in_flight,
            "instances": {k: [v.busy_s, v.covered_s, v.limit] for k, v in self.instances.items()},
            "minutes": [[minute, counts] for minute, counts in self.minutes.items()],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> WindowData:
        data = cls.empty()
        for slot, value in enumerate(raw["counts"][:SLOTS]):
            data.counts[slot] = value
        for name in ("latency", "queue", "diff"):
            target = getattr(data, name)
            for index, count in raw[name]:
                if 0 <= index < len(target):
                    target[index] += int(count)
        data.in_flight = int(raw.get("in_flight", 0))
        data.instances = {
            k: InstanceLoad(float(v[0]), float(v[1]), int(v[2])) for k, v in raw.get("instances", {}).items()
        }
        for minute, counts in raw.get("minutes", []):
            data.minutes[int(minute)] = [int(c) for c in counts[:MINUTE_SLOTS]]
        return data

    # --- the monitor contract ---
    def to_stats(self, endpoint: str, deployment: str, window_seconds: float) -> WindowStats:
        counts = self.counts
        requests = int(counts[REQUESTS])
        queued = int(counts[QUEUED])
        compared = int(counts[MIRROR_COMPARED])
        return WindowStats(
            endpoint=endpoint,
            deployment=deployment,
            window_seconds=window_seconds,
            requests=requests,
            status={key: int(counts[slot]) for key, slot in STATUS_SLOTS.items()},
            latency_ms=summary(self.latency, requests, counts[LATENCY_SUM]),
            in_flight=self.in_flight,
            queue_wait_ms=summary(self.queue, queued, counts[QUEUE_SUM]),
            utilisation={k: round(v.utilisation, 6) for k, v in self.instances.items()},
            mirror=MirrorSummary(
                requests=int(counts[MIRROR_REQUESTS]),
                compared=compared,
                matches=int(counts[MIRROR_MATCHES]),
                dropped=int(counts[MIRROR_DROPPED]),
                latency_diff_ms_p50=_round(percentile(self.diff, compared, 0.5, signed=True)),
            ),
            minutes=[
                MinuteCounts(
                    start=minute * 60,
                    requests=counts[REQUESTS],
                    status={key: counts[slot] for key, slot in STATUS_SLOTS.items()},
                )
                for minute, counts in sorted(self.minutes.items())
            ],
            limited={reason: int(counts[slot]) for reason, slot in LIMIT_SLOTS.items()},
        )


def summary(histogram: Sequence[int], count: int, total: float) -> LatencySummary:
    if count <= 0:
        return LatencySummary()
    return LatencySummary(
        p50=_round(percentile(histogram, count, 0.5)),
        p90=_round(percentile(histogram, count, 0.9)),
        p99=_round(percentile(histogram, count, 0.99)),
        mean=_round(total / count),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _sparse(histogram: Sequence[int]) -> list[tuple[int, int]]:
    return [(i, c) for i, c in enumerate(histogram) if c]


class WindowSet:
    """Every window this process keeps, by (endpoint, deployment); "" is the endpoint's own."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, str], Window] = {}

    def get(self, endpoint: str, deployment: str = "") -> Window:
        key = (endpoint.lower(), deployment)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = Window(key[0], deployment)
        return window

    def find(self, endpoint: str, deployment: str = "") -> Window | None:
        return self.windows.get((endpoint.lower(), deployment))

    def close(self, second: int) -> None:
        for window in self.windows.values():
            window.close(second)

    def prune(self, second: int, keep: Iterable[tuple[str, str]]) -> None:
        """Forget windows of routes that are gone once their data has aged out."""
        kept = set(keep)
        for key, window in list(self.windows.items()):
            if key not in kept and window.in_flight == 0 and second - window.last_data > HORIZON_S:
                del self.windows[key]


def parse_window(raw: str | None, default: float = 60.0) -> float:
    """``30s``, ``5m``, ``1h`` or plain seconds -> seconds, within (0, MAX_WINDOW_S]."""
    if raw is None or not raw.strip():
        return default
    text = raw.strip().lower()
    scale = 1.0
    if text[-1] in "smh":
        scale = {"s": 1.0, "m": 60.0, "h": 3600.0}[text[-1]]
        text = text[:-1]
    value = float(text) * scale  # ValueError for anything else
    if not math.isfinite(value) or value <= 0 or value > MAX_WINDOW_S:
        raise ValueError(f"window must be between 0 and {MAX_WINDOW_S:g} seconds")
    return value
