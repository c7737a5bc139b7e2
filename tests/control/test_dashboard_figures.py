"""The dashboard's figures from known inputs: availability and SLO from the gateways' minutes,
weights over time from a rollout's history, chart geometry, health, the Temporal UI link, and
a deployment's logs read into sections."""

from __future__ import annotations

import pytest

from config.settings import Settings
from config.stats import MinuteCounts, WindowStats
from control.dashboard.charts import HEIGHT, PAD, WIDTH, line_chart
from control.dashboard.data import (
    availability_block,
    availability_view,
    endpoint_health,
    logs_query_problem,
    parse_logs,
    to_sample,
    weights_over_time,
    workflow_url,
)

NOW = 1_800_000_000.0


def minutes(*counts: tuple[int, int, int]) -> WindowStats:
    """(minutes ago, requests, 5xx) per minute."""
    return WindowStats(
        endpoint="ep",
        deployment="",
        window_seconds=1,
        minutes=[
            MinuteCounts(
                start=int(NOW) - 60 * ago - int(NOW) % 60, requests=n, status={"2xx": n - bad, "5xx": bad}
            )
            for ago, n, bad in counts
        ],
    )


def test_availability_over_the_hour_and_the_day_against_the_slo_tag() -> None:
    stats = minutes((0, 1000, 1), (30, 1000, 0), (120, 1000, 10))
    view = availability_view(stats, {"tidegate/slo_availability": "99.9"}, now=NOW)
    assert (view.hour.requests, view.hour.failures) == (2000, 1)
    assert (view.day.requests, view.day.failures) == (3000, 11)
    assert view.slo is not None and view.slo_day is not None
    assert view.slo.budget_remaining == pytest.approx(0.5)  # 1 of 2 allowed failures spent
    assert view.slo.burn_rate == pytest.approx(0.5)
    assert view.slo_day.budget_remaining == pytest.approx(1 - 11 / 3)


@pytest.mark.parametrize(
    ("tags", "slo", "problem"),
    [({}, False, None), ({"tidegate/slo_availability": "100"}, False, "below 100")],
    ids=["no_tag_no_slo", "a_bad_tag_is_named"],
)
def test_slo_only_from_a_valid_tag(tags: dict[str, str], slo: bool, problem: str | None) -> None:
    view = availability_view(minutes((0, 10, 0)), tags, now=NOW)
    assert (view.slo is not None) is slo
    assert (problem is None and view.slo_problem is None) or (problem or "") in (view.slo_problem or "")


def test_weights_over_time_from_the_history() -> None:
    history = [
        {"at": "2026-11-29T08:00:00+00:00", "event": "weights", "detail": "canary 10%"},
        {"at": "2026-11-29T08:00:05+00:00", "event": "check.passed", "detail": "error_rate 0 <= 0.05"},
        {"at": "2026-11-29T08:00:10+00:00", "event": "weights", "detail": "canary 40%"},
        {"at": "2026-11-29T08:00:12+00:00", "event": "rolledback", "detail": "by hand"},
    ]
    points = weights_over_time(history)
    assert [w for _, w in points] == [10, 40, 0]
    assert points[1][0] - points[0][0] == 10


def test_a_line_chart_scales_into_its_box_and_leaves_gaps_out() -> None:
    chart = line_chart(
        "rps", "req/s", {"a": [(0.0, 0.0), (5.0, None), (10.0, 10.0)]}, start=0, end=10, top=10
    )
    assert chart.lines[0].points == f"{PAD:.1f},{HEIGHT - PAD:.1f} {WIDTH - PAD:.1f},{PAD:.1f}"
    assert chart.lines[0].last == 10.0


def test_a_step_chart_holds_each_value_until_the_next() -> None:
    chart = line_chart("w", "%", {"canary": [(0.0, 0.0), (5.0, 100.0)]}, start=0, end=10, top=100, step=True)
    xs = [float(p.split(",")[0]) for p in chart.lines[0].points.split()]
    ys = [float(p.split(",")[1]) for p in chart.lines[0].points.split()]
    assert ys == [HEIGHT - PAD, HEIGHT - PAD, PAD, PAD]
    assert xs[1] == xs[2] and xs[-1] == WIDTH - PAD


@pytest.mark.parametrize(
    ("healths", "worst"),
    [([], "NoDeployments"), (["Healthy", "Degraded"], "Degraded"), (["Unhealthy", "Healthy"], "Unhealthy")],
    ids=["none", "degraded_wins", "unhealthy_wins"],
)
def test_an_endpoint_is_as_healthy_as_its_worst_deployment(healths: list[str], worst: str) -> None:
    assert endpoint_health([{"health": h} for h in healths]) == worst


def test_the_temporal_ui_link_quotes_the_workflow_id() -> None:
    url = workflow_url(Settings(temporal_ui_port=8233), "rollout/ep/3")
    assert url == "http://127.0.0.1:8233/namespaces/default/workflows/rollout%2Fep%2F3"


def test_several_gateways_minutes_add_up_minute_by_minute() -> None:
    from activities.local.monitor import sum_windows

    one = minutes((0, 10, 1), (1, 5, 0))
    two = minutes((0, 20, 2))
    summed = sum_windows([one, two])
    assert [(m.requests, m.status["5xx"]) for m in summed.minutes] == [(5, 0), (30, 3)]
    assert summed.minutes[0].start < summed.minutes[1].start


def test_get_logs_text_reads_into_one_section_per_heading() -> None:
    text = (
        "=== gateway access log ===\n"
        '{"request_id": "r1", "status": 200}\n'
        "\n"
        "=== instance blue-1 ===\n"
        "request_id=r1 scoring tag <script>\n"
        "=== not a heading\n"
        "\n"
        "=== instance blue-2 ===\n"
    )
    assert [(s.title, s.instance, s.lines) for s in parse_logs(text)] == [
        ("gateway access log", None, ['{"request_id": "r1", "status": 200}']),
        ("instance blue-1", "blue-1", ["request_id=r1 scoring tag <script>", "=== not a heading"]),
        ("instance blue-2", "blue-2", []),
    ]
    assert parse_logs("") == []


@pytest.mark.parametrize(
    ("instance", "request_id", "lines", "problem"),
    [
        (None, None, 200, None),
        ("blue-1a2b", "rid-1", 1, None),
        ("../blue", None, 200, "instance"),
        (None, "a\nb", 200, "request id"),
        (None, "x" * 101, 200, "request id"),
        (None, None, 0, "lines"),
        (None, None, 5001, "lines"),
    ],
    ids=[
        "none",
        "fine",
        "path_as_instance",
        "newline_in_request_id",
        "long_request_id",
        "no_lines",
        "too_many",
    ],
)
def test_a_logs_filter_is_refused_with_what_is_wrong(
    instance: str | None, request_id: str | None, lines: int, problem: str | None
) -> None:
    said = logs_query_problem(instance=instance, request_id=request_id, lines=lines)
    assert (said is None) if problem is None else (said is not None and said.startswith(problem))


def test_several_gateways_429s_by_reason_add_up() -> None:
    from activities.local.monitor import sum_windows

    one = WindowStats(
        endpoint="ep", deployment="", window_seconds=5, limited={"endpoint_rate": 3, "model": 1}
    )
    two = WindowStats(endpoint="ep", deployment="", window_seconds=5, limited={"endpoint_rate": 4})
    assert sum_windows([one, two]).limited == {"endpoint_rate": 7, "model": 1}


def test_a_sample_has_429s_per_second_by_every_reason() -> None:
    stats = WindowStats(
        endpoint="ep",
        deployment="",
        window_seconds=5,
        requests=50,
        status={"2xx": 40, "4xx": 10, "429": 10},
        limited={"endpoint_rate": 8, "queue_wait": 2},
    )
    sample = to_sample(stats, NOW)
    assert sample.limited == {
        "endpoint_rate": 1.6,
        "instance_concurrency": 0.0,
        "queue_wait": 0.4,
        "model": 0.0,
    }
    assert sample.errors["429"] == sum(sample.limited.values())


def test_show_gives_each_deployment_its_own_figures_and_keeps_the_endpoints() -> None:
    tags = {"tidegate/slo_availability": "99"}
    endpoint = availability_view(minutes((0, 110, 4)), tags, now=NOW)
    blue = availability_view(minutes((0, 100, 0)), tags, now=NOW)
    green = availability_view(minutes((0, 10, 4)), tags, now=NOW)
    block = availability_block(endpoint, {"green": green, "blue": blue, "gone": None})
    assert block["slo_percent"] == 99.0 and block["failure_statuses"] == ["5xx", "408"]
    assert block["last_hour"]["requests"] == 110 and block["last_hour"]["failures"] == 4
    assert list(block["deployments"]) == ["blue", "gone", "green"]
    assert block["deployments"]["blue"]["last_hour"] == {
        "availability_percent": 100.0,
        "requests": 100,
        "failures": 0,
        "error_budget_remaining": 1.0,
        "burn_rate": 0.0,
    }
    green_hour = block["deployments"]["green"]["last_hour"]
    assert (green_hour["requests"], green_hour["failures"]) == (10, 4)
    assert green_hour["availability_percent"] == pytest.approx(60.0)
    assert green_hour["burn_rate"] == pytest.approx(40.0)  # 40 % failing, 1 % allowed
    assert "error" in block["deployments"]["gone"]
    assert "deployments" not in availability_block(endpoint)  # the endpoint's fields as before


def test_the_endpoint_page_draws_429s_by_reason_for_the_endpoint_and_each_deployment() -> None:
    from control.dashboard.data import AvailabilityView, DeploymentPanel, EndpointPage, EndpointRow, Sample
    from control.dashboard.views import endpoint_page_charts, environment

    hostile = "<script>window.__pwned = 1</script>"

    def samples(limited: dict[str, float]) -> list[Sample]:
        return [
            Sample(at=NOW - 10 + t, rps=5.0, p50=1.0, p99=2.0, limited={k: v * t for k, v in limited.items()})
            for t in range(5)
        ]

    blue = availability_view(minutes((0, 100, 0)), {}, now=NOW)
    green = availability_view(minutes((0, 10, 4)), {}, now=NOW)
    row = EndpointRow(
        name="ep",
        scoring_uri="http://ep.localhost/score",
        auth_mode="key",
        provisioning_state="Succeeded",
        traffic={"blue": 100, "green": 0},
        mirror_traffic={},
        health="Healthy",
        rps=5.0,
        availability=availability_view(minutes((0, 110, 4)), {}, now=NOW),
    )

    def panel(name: str, availability: AvailabilityView, limited: dict[str, float]) -> DeploymentPanel:
        return DeploymentPanel(
            name=name,
            weight=100,
            mirror=0,
            provisioning_state="Succeeded",
            health="Healthy",
            health_reason=hostile,
            instances=[],
            now=None,
            series=samples(limited),
            availability=availability,
        )

    page = EndpointPage(
        row=row,
        description=None,
        tags={},
        deployments=[panel("blue", blue, {"queue_wait": 1.0}), panel("green", green, {})],
        rollout_id=None,
        rollout_phase=None,
        series=samples({"endpoint_rate": 2.0}),
    )
    charts, endpoint_charts = endpoint_page_charts(page, NOW)
    assert [line.name for line in endpoint_charts[1].lines] == [
        "endpoint_rate",
        "instance_concurrency",
        "queue_wait",
        "model",
    ]
    assert endpoint_charts[1].lines[0].last == 8.0
    assert [line.name for line in charts["blue"][3].lines] == ["instance_concurrency", "queue_wait", "model"]
    assert charts["blue"][3].lines[1].last == 4.0
    html = (
        environment()
        .get_template("endpoint_live.html")
        .render(page=page, charts=charts, endpoint_charts=endpoint_charts, prefix="/ui", rendered_at=NOW)
    )
    assert html.count('aria-label="429s/s by reason"') == 3  # the endpoint's and each deployment's
    assert "endpoint_rate: 8.00" in html and "queue_wait: 4.00" in html
    assert hostile not in html and "&lt;script&gt;" in html
    assert 'data-hour-requests="10" data-hour-failures="4"' in html  # green's own availability
