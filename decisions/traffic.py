"""Traffic arithmetic: parse `--traffic "blue=90 green=10"` and judge a split."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_PAIR = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9-]*)=(?P<value>.*)$")


class TrafficError(ValueError):
    """A traffic string or split a user must fix; the message names the part at fault."""


def parse_traffic(text: str) -> dict[str, int]:
    """Parse Azure's `name=percent` pairs, separated by spaces or commas."""
    pairs = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    if not pairs:
        raise TrafficError('traffic: empty; expected pairs like "blue=90 green=10"')
    result: dict[str, int] = {}
    for pair in pairs:
        match = _PAIR.match(pair)
        if match is None:
            raise TrafficError(f"traffic: '{pair}' is not of the form name=percent")
        name, value = match["name"], match["value"]
        if not value.isdigit():
            raise TrafficError(f"traffic: '{pair}': percent must be a whole number 0-100")
        percent = int(value)
        if percent > 100:
            raise TrafficError(f"traffic: '{pair}': percent must be between 0 and 100")
        if name in result:
            raise TrafficError(f"traffic: deployment '{name}' given twice")
        result[name] = percent
    return result


def check_traffic(traffic: Mapping[str, int], deployments: Iterable[str]) -> None:
    """A live split names known deployments and sums to 100 (or is all zero)."""
    known = set(deployments)
    for name, percent in traffic.items():
        if name not in known:
            raise TrafficError(f"traffic: deployment '{name}' does not exist in this endpoint")
        if not 0 <= percent <= 100:
            raise TrafficError(f"traffic: {name}={percent} must be between 0 and 100")
    total = sum(traffic.values())
    if total not in (0, 100):
        shown = " ".join(f"{k}={v}" for k, v in traffic.items())
        raise TrafficError(f'traffic: "{shown}" sums to {total}; it must sum to 100 (or all be 0)')


def check_mirror(mirror: Mapping[str, int], traffic: Mapping[str, int], deployments: Iterable[str]) -> None:
    """One shadow deployment, not one that takes live traffic. Azure caps the share at 50 %;
    Tidegate allows any share up to 100 % (the gateway sheds copies the shadow cannot take)."""
    known = set(deployments)
    live = {name: pct for name, pct in mirror.items() if pct > 0}
    if len(live) > 1:
        raise TrafficError("mirror_traffic: only one deployment can receive mirrored traffic")
    for name, percent in live.items():
        if name not in known:
            raise TrafficError(f"mirror_traffic: deployment '{name}' does not exist in this endpoint")
        if percent > 100:
            raise TrafficError(f"mirror_traffic: {name}={percent} must be at most 100")
        if traffic.get(name, 0) > 0:
            raise TrafficError(
                f"mirror_traffic: {name} takes live traffic; a deployment cannot mirror and serve"
            )


def merge_traffic(current: Mapping[str, int], change: Mapping[str, int]) -> dict[str, int]:
    """Azure sets only the named deployments; the others keep their share (usually 0)."""
    merged = dict(current)
    merged.update(change)
    return merged


def rollout_split(baseline: str, canary: str, pool: int, canary_weight: int) -> dict[str, int]:
    """Share `pool` (what baseline and canary held together) between them, canary at `weight` %."""
    canary_share = round(pool * canary_weight / 100)
    return {baseline: pool - canary_share, canary: canary_share}
