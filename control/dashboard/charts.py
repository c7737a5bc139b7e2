"""Line charts as geometry for the templates to draw as inline SVG (no script, no CDN): each
series scaled into a fixed box, with its largest value for the axis label."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

WIDTH = 360
HEIGHT = 110
PAD = 4
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


class Line(BaseModel):
    name: str
    colour: str
    points: str  # "x,y x,y ..." for <polyline points>
    last: float | None


class Chart(BaseModel):
    title: str
    unit: str
    width: int = WIDTH
    height: int = HEIGHT
    top: float
    lines: list[Line]
    threshold_y: float | None = None
    threshold: float | None = None
    # (x, event, labelled): events drawn as vertical marks, labelled where there is room
    markers: list[tuple[float, str, bool]] = []


def line_chart(
    title: str,
    unit: str,
    series: dict[str, Sequence[tuple[float, float | None]]],
    *,
    start: float | None = None,
    end: float | None = None,
    top: float | None = None,
    threshold: float | None = None,
    markers: Sequence[tuple[float, str]] = (),
    step: bool = False,
    width: int = WIDTH,
) -> Chart:
    """``series``: name -> (time, value) points; None values are gaps left out. ``step`` draws
    a value held until the next point (weights), else straight segments."""
    times = [t for points in series.values() for t, _ in points] + [t for t, _ in markers]
    values = [v for points in series.values() for _, v in points if v is not None]
    t0 = start if start is not None else (min(times) if times else 0.0)
    t1 = end if end is not None else (max(times) if times else 1.0)
    span = max(t1 - t0, 1e-9)
    ceiling = top if top is not None else max([*values, threshold or 0.0, 0.0]) * 1.1 or 1.0

    def x(t: float) -> float:
        return round(PAD + (width - 2 * PAD) * (t - t0) / span, 1)

    def y(v: float) -> float:
        return round(HEIGHT - PAD - (HEIGHT - 2 * PAD) * min(v, ceiling) / ceiling, 1)

    lines = []
    for index, (name, points) in enumerate(series.items()):
        coords: list[str] = []
        previous: float | None = None
        for t, v in points:
            if v is None:
                continue
            if step and previous is not None:
                coords.append(f"{x(t)},{y(previous)}")
            coords.append(f"{x(t)},{y(v)}")
            previous = v
        if step and previous is not None and end is not None:
            coords.append(f"{x(end)},{y(previous)}")
        known = [v for _, v in points if v is not None]
        lines.append(
            Line(
                name=name,
                colour=COLOURS[index % len(COLOURS)],
                points=" ".join(coords),
                last=known[-1] if known else None,
            )
        )
    return Chart(
        title=title,
        unit=unit,
        top=ceiling,
        lines=lines,
        threshold=threshold,
        threshold_y=y(threshold) if threshold is not None else None,
        markers=_spaced([(x(t), label) for t, label in sorted(markers)]),
        width=width,
    )


def _spaced(marks: list[tuple[float, str]], room: float = 48.0) -> list[tuple[float, str, bool]]:
    """Every mark, with a label only where it does not run into the previous label."""
    spaced = []
    last = -room
    for x, label in marks:
        labelled = x - last >= room
        if labelled:
            last = x
        spaced.append((x, label, labelled))
    return spaced
