"""A scale set's rolling update step by step: which VMs to add, drain and delete."""

from __future__ import annotations

import pytest

from config.host_api import InstancePhase
from decisions.scale_set_update import (
    GalleryVersion,
    ImageRecord,
    ScaleSetStep,
    ScaleSetVm,
    format_draining,
    image_for,
    newest_gallery_version,
    next_scale_set_step,
    parse_draining,
    remember_image,
)

NOW = 1000.0
DRAIN = 10.0


def vms(*rows: str) -> list[ScaleSetVm]:
    """`"0 old ready"` rows: instance id, spec, phase."""
    out = []
    for row in rows:
        vm_id, spec, state = row.split()
        phase: InstancePhase = state  # type: ignore[assignment]
        out.append(ScaleSetVm(id=vm_id, spec=spec, state=phase))
    return out


@pytest.mark.parametrize(
    ("read", "wanted", "surge", "draining", "expected"),
    [
        pytest.param(
            vms("0 old ready", "1 old ready"),
            2,
            1,
            {},
            ScaleSetStep(capacity=3),
            id="surge_one_adds_one_new_vm_beside_two_old",
        ),
        pytest.param(
            vms("0 old ready", "1 old ready", "2 new starting"),
            2,
            1,
            {},
            ScaleSetStep(),
            id="nothing_while_the_new_vm_boots",
        ),
        pytest.param(
            vms("0 old ready", "1 old ready", "2 new ready"),
            2,
            1,
            {},
            ScaleSetStep(draining={"0": NOW + DRAIN}),
            id="a_ready_new_vm_lets_one_old_vm_drain",
        ),
        pytest.param(
            vms("0 old ready", "1 old ready", "2 new ready"),
            2,
            1,
            {"0": NOW + 1},
            ScaleSetStep(draining={"0": NOW + 1}),
            id="a_draining_vm_stays_until_its_time",
        ),
        pytest.param(
            vms("0 old ready", "1 old ready", "2 new ready"),
            2,
            1,
            {"0": NOW - 1},
            ScaleSetStep(delete=["0"]),
            id="a_drained_vm_is_deleted",
        ),
        pytest.param(
            vms("1 old ready", "2 new ready"),
            2,
            1,
            {},
            ScaleSetStep(capacity=3),
            id="after_a_delete_the_next_new_vm_starts",
        ),
        pytest.param(
            vms("1 old ready", "2 new ready", "3 new ready"),
            2,
            1,
            {},
            ScaleSetStep(draining={"1": NOW + DRAIN}),
            id="the_last_old_vm_drains_once_two_new_are_ready",
        ),
        pytest.param(
            vms("0 old ready", "1 old ready", "2 new failed"),
            2,
            1,
            {},
            ScaleSetStep(halted=True),
            id="a_failed_new_vm_halts_with_the_old_serving",
        ),
        pytest.param(
            vms("0 old ready", "1 old ready", "2 old ready", "3 new ready", "4 new failed"),
            3,
            2,
            {},
            ScaleSetStep(halted=True),
            id="halted_drains_nothing_more_and_starts_nothing_more",
        ),
        pytest.param(
            vms("0 new ready", "1 new ready", "2 old failed"),
            2,
            1,
            {},
            ScaleSetStep(delete=["2"]),
            id="the_old_spec_put_back_deletes_the_failed_new_vm_at_once",
        ),
        pytest.param(
            vms("0 old ready", "1 old ready"),
            2,
            0,
            {},
            ScaleSetStep(capacity=4),
            id="no_surge_starts_every_new_vm_at_once",
        ),
        pytest.param(
            vms("0 new ready", "1 new ready", "2 new starting"),
            2,
            0,
            {},
            ScaleSetStep(delete=["2"]),
            id="scale_in_deletes_a_booting_vm_before_a_serving_one",
        ),
        pytest.param(
            vms("0 new ready", "1 new ready", "2 new ready"),
            1,
            0,
            {},
            ScaleSetStep(draining={"2": NOW + DRAIN, "1": NOW + DRAIN}),
            id="scale_in_drains_the_newest_serving_vms",
        ),
        pytest.param(
            vms("0 old ready", "1 new ready"),
            1,
            1,
            {"0": NOW + 5},
            ScaleSetStep(draining={"0": NOW + 5}),
            id="steady_with_one_draining_waits",
        ),
        pytest.param(
            vms("0 old unready", "1 new ready"),
            1,
            1,
            {"0": NOW + 5},
            ScaleSetStep(delete=["0"]),
            id="a_draining_vm_that_stops_serving_goes_at_once",
        ),
        pytest.param(
            vms("0 new ready", "1 new ready"),
            2,
            1,
            {"7": NOW + 5},
            ScaleSetStep(),
            id="a_draining_mark_of_a_vm_gone_is_dropped",
        ),
        pytest.param(
            [],
            3,
            0,
            {},
            ScaleSetStep(capacity=3),
            id="a_new_scale_set_starts_every_vm",
        ),
    ],
)
def test_next_scale_set_step(
    read: list[ScaleSetVm], wanted: int, surge: int, draining: dict[str, float], expected: ScaleSetStep
) -> None:
    step = next_scale_set_step(
        vms=read,
        spec="new",
        wanted=wanted,
        max_surge=surge,
        draining=draining,
        now=NOW,
        drain_seconds=DRAIN,
    )
    assert step == expected


def test_a_whole_roll_of_two_vms_with_surge_one_never_serves_fewer_than_two() -> None:
    """Play the steps against a simulated scale set: new VMs turn ready on the next read."""
    fleet = {"0": ("old", "ready"), "1": ("old", "ready")}
    draining: dict[str, float] = {}
    next_id, now, least_serving, steps = 2, NOW, 2, 0
    while not (all(spec == "new" for spec, _ in fleet.values()) and len(fleet) == 2 and not draining):
        steps += 1
        assert steps < 50, fleet
        read = [ScaleSetVm(id=i, spec=spec, state=state) for i, (spec, state) in fleet.items()]  # type: ignore[arg-type]
        step = next_scale_set_step(
            vms=read, spec="new", wanted=2, max_surge=1, draining=draining, now=now, drain_seconds=DRAIN
        )
        fleet = {i: (spec, "ready") for i, (spec, _) in fleet.items()}  # booting VMs are ready now
        if step.delete:
            for i in step.delete:
                del fleet[i]
            draining = {i: t for i, t in step.draining.items() if i in fleet}
        else:
            draining = step.draining
            for _ in range((step.capacity or len(fleet)) - len(fleet)):
                fleet[str(next_id)] = ("new", "starting")
                next_id += 1
        assert len([i for i in fleet if i not in draining]) <= 3
        serving = [i for i, (_, state) in fleet.items() if state == "ready" and i not in draining]
        least_serving = min(least_serving, len(serving))
        now += DRAIN
    assert least_serving >= 2 and sorted(fleet) == ["2", "3"]


def test_draining_tag_reads_back_what_was_written_and_ignores_garbage() -> None:
    draining = {"3": 1700000000.5, "12": 1700000001.0}
    assert parse_draining(format_draining(draining)) == draining
    assert parse_draining("3@soon 4@12.5") == {"4": 12.5}
    assert parse_draining(None) == {}


@pytest.mark.parametrize(
    ("versions", "newest"),
    [
        pytest.param([GalleryVersion("1.0.9"), GalleryVersion("1.0.10")], "1.0.10", id="numeric_not_lexical"),
        pytest.param(
            [GalleryVersion("1.0.0"), GalleryVersion("2.0.0", exclude_from_latest=True)],
            "1.0.0",
            id="excluded_from_latest_is_skipped",
        ),
        pytest.param(
            [GalleryVersion("1.0.0"), GalleryVersion("1.1.0", provisioning_state="Creating")],
            "1.0.0",
            id="a_version_still_replicating_is_skipped",
        ),
        pytest.param([], None, id="none_at_all"),
    ],
)
def test_newest_gallery_version(versions: list[GalleryVersion], newest: str | None) -> None:
    assert newest_gallery_version(versions) == newest


def test_an_update_keeps_the_image_a_host_patch_takes_the_newest_and_a_failed_one_goes_back() -> None:
    created = remember_image([], ImageRecord("img/1.0.0", "s0", 0))
    assert image_for(created, spec="s0", patch=0) == "img/1.0.0"  # a repeat
    assert image_for(created, spec="s1", patch=0) == "img/1.0.0"  # an update: same image
    assert image_for(created, spec="p1", patch=1) is None  # a host patch: the newest
    patched = remember_image(created, ImageRecord("img/1.0.1", "p1", 1))
    assert image_for(patched, spec="s0", patch=0) == "img/1.0.0"  # the failed patch put back
    back = remember_image(patched, ImageRecord("img/1.0.0", "s0", 0))
    assert image_for(back, spec="p1", patch=1) is None  # tried again: the newest again
    kept = remember_image(patched, ImageRecord("img/1.0.1", "p1", 1))
    assert kept == patched
    # An update after a patch (its YAML knows no patch level) stays on the patched image.
    updated = remember_image(kept, ImageRecord(image_for(kept, spec="u", patch=0) or "", "u", 0))
    assert updated[0].image == "img/1.0.1" and image_for(updated, spec="p1", patch=1) == "img/1.0.1"
