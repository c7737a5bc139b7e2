"""Which validity window a snapshot URL (a read-only SAS) in a scale set's custom data is signed for.

A VM reads its custom data at first boot, from the scale set's model as it is then. Tidegate makes
VMs only through a PUT of that model (a scale-out, or the PUT after a failed VM is deleted), so if
every PUT carries URLs with at least half their life left, no VM Tidegate makes boots with an
expired one, however long after the first PUT it comes.

Windows are quantised: time is cut into half-lifes, and a PUT made during one is signed from its
start for one whole lifetime. Within a half-life the same URLs are signed again (a repeat PUT is
no change to the model, so no VM is touched); in the next, new ones (one model change per
half-life, and only when something asks for instances). No state is kept: `now` decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The storage service's clock may lag the worker's: a URL is valid from a little before its window.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class SasWindow:
    start: datetime  # the signed start (skew included)
    expiry: datetime  # the signed expiry
    renew_at: datetime  # from here on, a PUT signs the next window


def sas_window(now: datetime, ttl: timedelta) -> SasWindow:
    """The window a URL signed at `now` covers: from the start of the current half-life (whole
    seconds, as a SAS carries them) for one `ttl`. It has more than `ttl / 2` left at `now`."""
    half = timedelta(seconds=max(1, int(ttl.total_seconds() // 2)))
    base = EPOCH + ((now - EPOCH) // half) * half
    return SasWindow(start=base - CLOCK_SKEW, expiry=base + 2 * half, renew_at=base + half)
