"""Prometheus text for ``GET /metrics``, named after Azure Monitor's online-endpoint metrics.

The names, labels and meanings are tabled in ``gateway/README-metrics.md``. In short:
``RequestsPerMinute``, ``RequestLatency`` (a summary in ms) and ``RequestLatency_P50`` …
``_P99`` as Azure Monitor means them, ``ConnectionsActive``, and ``tidegate_*`` counters and
gauges for limits, instances and mirroring. ``deployment=""`` is the endpoint as clients saw it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from decisions.availability import DAY_S, DEFAULT_FAILURE_KEYS, HOUR_S, CountBucket, availability
from gateway.windows import (
    LATENCY_SUM,
    LIMIT_SLOTS,
    MINUTES_KEPT,
    MIRROR_COMPARED,
    MIRROR_DROPPED,
    MIRROR_MATCHES,
    MIRROR_REQUESTS,
    QUEUED,
    REQUESTS,
    SLOTS,
    STATUS_SLOTS,
    WindowData,
    percentile,
)

if TYPE_CHECKING:
    from gateway.gateway import Gateway

MINUTE_S = 60.0
_AVAILABILITY_WINDOWS = (("1h", HOUR_S), ("1d", DAY_S))
_CLASSES = ("2xx", "4xx", "5xx")
_CODES = ("408", "424", "429", "503")
_QUANTILES = (("0.5", 0.5), ("0.9", 0.9), ("0.95", 0.95), ("0.99", 0.99))


@dataclass
class InstanceGauge:
    outstanding: int = 0
    ejected: bool = False


@dataclass
class Snapshot:
    """One or more processes' counters, last-minute windows and gauges; adds up exactly."""

    cumulative: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    minute: dict[tuple[str, str], WindowData] = field(default_factory=dict)
    queued: dict[tuple[str, str], int] = field(default_factory=dict)
    instances: dict[tuple[str, str, str], InstanceGauge] = field(default_factory=dict)
    connections: int = 0
    opened: int = 0
    refused: int = 0
    processes: int = 1

    def merge(self, other: Snapshot) -> None:
        for key, counts in other.cumulative.items():
            mine = self.cumulative.setdefault(key, [0] * SLOTS)
            for slot, value in enumerate(counts):
                mine[slot] += value
        for key, data in other.minute.items():
            if key in self.minute:
                self.minute[key].merge(data)
            else:
                self.minute[key] = data
        for key, count in other.queued.items():
            self.queued[key] = self.queued.get(key, 0) + count
        for key, gauge in other.instances.items():
            mine_gauge = self.instances.setdefault(key, InstanceGauge())
            mine_gauge.outstanding += gauge.outstanding
            mine_gauge.ejected = mine_gauge.ejected or gauge.ejected
        self.connections += other.connections
        self.opened += other.opened
        self.refused += other.refused
        self.processes += other.processes

    def to_json(self) -> dict[str, Any]:
        return {
            "windows": [
                {
                    "endpoint": e,
                    "deployment": d,
                    "cumulative": self.cumulative.get((e, d), [0] * SLOTS),
                    "minute": self.minute[(e, d)].to_json(),
                    "queued": self.queued.get((e, d), 0),
                }
                for (e, d) in self.minute
            ],
            "instances": [[e, d, i, g.outstanding, g.ejected] for (e, d, i), g in self.instances.items()],
            "connections": self.connections,
            "opened": self.opened,
            "refused": self.refused,
            "processes": self.processes,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Snapshot:
        snap = cls(
            connections=int(raw.get("connections", 0)),
            opened=int(raw.get("opened", 0)),
            refused=int(raw.get("refused", 0)),
            processes=int(raw.get("processes", 1)),
        )
        for entry in raw.get("windows", []):
            key = (str(entry["endpoint"]), str(entry["deployment"]))
            snap.cumulative[key] = list(entry["cumulative"])[:SLOTS]
            snap.minute[key] = WindowData.from_json(entry["minute"])
            snap.queued[key] = int(entry.get("queued", 0))
        for e, d, i, outstanding, ejected in raw.get("instances", []):
            snap.instances[(e, d, i)] = InstanceGauge(int(outstanding), bool(ejected))
        return snap


class StatsSource(Protocol):
    """Where the admin API reads windows: this process, or every gateway process summed."""

    async def window(
        self, endpoint: str, deployment: str, seconds: float, minutes: int = 0
    ) -> WindowData: ...

    async def snapshot(self) -> Snapshot: ...


class LocalStats:
    """This process's windows only."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw

    async def window(self, endpoint: str, deployment: str, seconds: float, minutes: int = 0) -> WindowData:
        return self._gw.window_data(endpoint, deployment, seconds, minutes)

    async def snapshot(self) -> Snapshot:
        return take_snapshot(self._gw)


def take_snapshot(gw: Gateway) -> Snapshot:
    """This process's part of ``/metrics``."""
    snap = Snapshot(connections=len(gw.connections), opened=gw.opened, refused=gw.refused)
    for key, window in list(gw.windows.windows.items()):
        endpoint, deployment = key
        snap.cumulative[key] = window.cumulative()
        # The last minute's window, carrying the day of per-minute counts availability reads.
        snap.minute[key] = gw.window_data(endpoint, deployment, MINUTE_S, MINUTES_KEPT)
    for name, endpoint in gw.live.items():
        for dep_name, deployment in endpoint.deployments.items():
            snap.queued[(name, dep_name)] = deployment.queued
            for instance in deployment.instances:
                snap.instances[(name, dep_name, instance.id)] = InstanceGauge(
                    instance.outstanding, math.isinf(instance.ejected_until)
                )
    return snap


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float | None) -> str:
    if value is None:
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render(snap: Snapshot, *, now: float, failure_keys: Sequence[str] = DEFAULT_FAILURE_KEYS) -> str:
    """The Prometheus text exposition (version 0.0.4); availability over the hour and the day
    before ``now`` counts ``failure_keys`` (TIDEGATE_AVAILABILITY_FAILURE_STATUSES) as failures."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    keys = sorted(snap.minute)
    family("RequestsPerMinute", "gauge", "Requests answered in the last 60 s.")
    for e, d in keys:
        counts = snap.minute[(e, d)].counts
        for klass in _CLASSES:
            value = counts[STATUS_SLOTS[klass]]
            out.append(
                f"RequestsPerMinute{_labels(endpoint=e, deployment=d, status_class=klass)} {_num(value)}"
            )

    family("RequestLatency", "summary", "Request latency in ms (quantiles over the last 60 s).")
    for e, d in keys:
        data = snap.minute[(e, d)]
        count = int(data.counts[REQUESTS])
        for label, q in _QUANTILES:
            value = percentile(data.latency, count, q)
            out.append(f"RequestLatency{_labels(endpoint=e, deployment=d, quantile=label)} {_num(value)}")
        cumulative = snap.cumulative.get((e, d), [0] * SLOTS)
        out.append(f"RequestLatency_sum{_labels(endpoint=e, deployment=d)} {_num(cumulative[LATENCY_SUM])}")
        out.append(f"RequestLatency_count{_labels(endpoint=e, deployment=d)} {_num(cumulative[REQUESTS])}")
    for label, q in _QUANTILES:
        name = f"RequestLatency_P{label[2:].ljust(2, '0')}"
        family(name, "gauge", f"p{label[2:].ljust(2, '0')} request latency in ms over the last 60 s.")
        for e, d in keys:
            data = snap.minute[(e, d)]
            value = percentile(data.latency, int(data.counts[REQUESTS]), q)
            out.append(f"{name}{_labels(endpoint=e, deployment=d)} {_num(value)}")

    family("ConnectionsActive", "gauge", "Client connections open now.")
    out.append(f"ConnectionsActive {snap.connections}")
    family("tidegate_processes", "gauge", "Gateway processes whose figures this answer sums.")
    out.append(f"tidegate_processes {snap.processes}")
    family("tidegate_connections_opened_total", "counter", "Client connections accepted since start.")
    out.append(f"tidegate_connections_opened_total {snap.opened}")
    family(
        "tidegate_connections_refused_total",
        "counter",
        "Client connections closed at once since start: the process had max_connections open.",
    )
    out.append(f"tidegate_connections_refused_total {snap.refused}")

    family("tidegate_requests_total", "counter", "Requests answered since start, by status class.")
    for e, d in keys:
        cumulative = snap.cumulative.get((e, d), [0] * SLOTS)
        for klass in _CLASSES:
            labels = _labels(endpoint=e, deployment=d, status_class=klass)
            out.append(f"tidegate_requests_total{labels} {_num(cumulative[STATUS_SLOTS[klass]])}")
    family("tidegate_responses_total", "counter", "408, 424, 429 and 503 answers since start.")
    for e, d in keys:
        cumulative = snap.cumulative.get((e, d), [0] * SLOTS)
        for code in _CODES:
            labels = _labels(endpoint=e, deployment=d, code=code)
            out.append(f"tidegate_responses_total{labels} {_num(cumulative[STATUS_SLOTS[code]])}")

    family(
        "tidegate_throttled_requests_total",
        "counter",
        "429 answers since start, by the limit that refused them (reason: the body's limit, or "
        "model for the instance's own).",
    )
    for e, d in keys:
        cumulative = snap.cumulative.get((e, d), [0] * SLOTS)
        for reason, slot in LIMIT_SLOTS.items():
            labels = _labels(endpoint=e, deployment=d, reason=reason)
            out.append(f"tidegate_throttled_requests_total{labels} {_num(cumulative[slot])}")

    family("tidegate_in_flight", "gauge", "Requests in flight or waiting for a slot.")
    for e, d in keys:
        out.append(f"tidegate_in_flight{_labels(endpoint=e, deployment=d)} {snap.minute[(e, d)].in_flight}")
    family("tidegate_queue_length", "gauge", "Requests waiting for an instance slot.")
    for (e, d), count in sorted(snap.queued.items()):
        out.append(f"tidegate_queue_length{_labels(endpoint=e, deployment=d)} {count}")
    family("tidegate_queue_wait_ms_p99", "gauge", "p99 wait for an instance slot in ms, last 60 s.")
    for e, d in keys:
        data = snap.minute[(e, d)]
        value = percentile(data.queue, int(data.counts[QUEUED]), 0.99)
        out.append(f"tidegate_queue_wait_ms_p99{_labels(endpoint=e, deployment=d)} {_num(value)}")

    family("tidegate_instance_outstanding", "gauge", "Requests on the instance now.")
    for (e, d, i), gauge in sorted(snap.instances.items()):
        labels = _labels(endpoint=e, deployment=d, instance=i)
        out.append(f"tidegate_instance_outstanding{labels} {gauge.outstanding}")
    family("tidegate_instance_ejected", "gauge", "1 while the instance is ejected after connection failures.")
    for (e, d, i), gauge in sorted(snap.instances.items()):
        out.append(
            f"tidegate_instance_ejected{_labels(endpoint=e, deployment=d, instance=i)} {int(gauge.ejected)}"
        )
    family("tidegate_instance_utilisation", "gauge", "Busy slot time / (slots x wall time), last 60 s.")
    for e, d in keys:
        for instance_id, load in sorted(snap.minute[(e, d)].instances.items()):
            labels = _labels(endpoint=e, deployment=d, instance=instance_id)
            out.append(f"tidegate_instance_utilisation{labels} {_num(round(load.utilisation, 6))}")

    family(
        "tidegate_availability_ratio",
        "gauge",
        "Share of requests answered without a failure (" + ", ".join(failure_keys) + ") over the last "
        "hour or day (window); no series without requests.",
    )
    for e, d in keys:
        buckets = [
            CountBucket(
                start=minute * 60,
                seconds=60,
                requests=int(counts[REQUESTS]),
                status={status: int(counts[slot]) for status, slot in STATUS_SLOTS.items()},
            )
            for minute, counts in sorted(snap.minute[(e, d)].minutes.items())
        ]
        for label, seconds in _AVAILABILITY_WINDOWS:
            ratio = availability(buckets, now=now, window_seconds=seconds, failure_keys=failure_keys).ratio
            if ratio is not None:
                labels = _labels(endpoint=e, deployment=d, window=label)
                out.append(f"tidegate_availability_ratio{labels} {_num(round(ratio, 9))}")

    for name, slot, help_text in (
        ("tidegate_mirror_requests_total", MIRROR_REQUESTS, "Copies sent to the shadow deployment."),
        ("tidegate_mirror_dropped_total", MIRROR_DROPPED, "Copies not sent: every shadow slot was busy."),
        ("tidegate_mirror_compared_total", MIRROR_COMPARED, "Shadow answers compared with the live one."),
        ("tidegate_mirror_matches_total", MIRROR_MATCHES, "Shadow answers that agreed with the live one."),
    ):
        family(name, "counter", help_text)
        for e, d in keys:
            if not d:
                continue
            cumulative = snap.cumulative.get((e, d), [0] * SLOTS)
            out.append(f"{name}{_labels(endpoint=e, deployment=d)} {_num(cumulative[slot])}")
    return "\n".join(out) + "\n"
