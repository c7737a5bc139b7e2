"""The dashboard in a real browser (Debian's Chromium driven by Selenium through Debian's
chromedriver) against a real stack: a person signs in, sees an endpoint and its traffic, watches
a rollout the CLI started move its weights and gate values, pauses it from the page (and
`tidegate rollout status` says Paused), rolls it back from the page and sees the event; reads a
deployment's logs, filtered by instance and by request id, and follows them. Signed out, a page
sends the login form and the API answers 401; a tag or a log line holding ``<script>`` shows as
text; a POST without the CSRF token is refused.

Screenshots land in the test's tmp dir; with ``TIDEGATE_UPDATE_SCREENSHOTS=1`` a passing run
also copies two of them to docs/ for the README.

Skipped only where Chromium or chromedriver is missing (``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.project import deployment_yaml
from tests.e2e.test_rollout import BODY
from tests.support.load import SteadyLoad
from tests.support.polling import until
from tests.support.stack import LocalStack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")

from selenium.common.exceptions import WebDriverException  # noqa: E402 - after the importorskip
from selenium.webdriver.support.ui import Select  # noqa: E402

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)

EP = "dash-ep"
DOCS = Path(__file__).resolve().parents[2] / "docs"
HOSTILE = "<script>window.__pwned = 1</script>"

ENDPOINT = f"""\
name: {EP}
auth_mode: key
description: 'Scores loans; <b>not bold</b> here'
tags:
  owner: '{HOSTILE}'
  tidegate/slo_availability: '99.9'
"""

MIX_EP = "dash-mix"
MIX_RATE = 10
MIX_ENDPOINT = f"""\
name: {MIX_EP}
auth_mode: key
tags:
  tidegate/slo_availability: '99'
properties:
  tidegate/max_requests_per_second: '{MIX_RATE}'
"""
# green's model: raises for some input (the client sees 424), and for other input takes longer
# than green's request_timeout_ms (the gateway answers 408: a failure by default).
SCORE_MIXED = """
import json, time

def init():
    pass

def run(raw_data):
    asked = json.loads(raw_data)
    if asked.get("fail"):
        raise ValueError("asked to fail")
    time.sleep(asked.get("sleep_s", 0))
    return {"ok": True}
"""
GREEN_TIMEOUT = """\
request_settings:
  request_timeout_ms: 1000
"""

LOGS_EP = "dash-logs"
HOSTILE_LOG = "<script>window.__pwnedLog = 1</script>"
# A model that prints what it was asked: print() in run() reaches the instance's log.
SCORE_PRINTS = """
import json

def init():
    pass

def run(raw_data):
    tag = json.loads(raw_data)["tag"]
    print(f"scoring tag {tag}")
    return {"tag": tag}
"""

# Two short steps, then one held past the test: only the page's buttons end it.
ROLLOUT = """
strategy: canary
steps:
  - {weight: 10, hold: 4s}
  - {weight: 40, hold: 4s}
  - {weight: 70, hold: 1h}
gates:
  - when: error_rate <= 0.05
    window: 5s
    min_requests: 5
check_interval: 1s
success_count: 1
after_failure: {canary: keep}
"""


class Browser:
    """One Chromium window and the little this test asks of it."""

    def __init__(self, driver: Any, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots

    def open(self, path: str) -> None:
        self.driver.get(f"{self.base}{path}")

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def text(self, selector: str) -> str:
        """The element's text now ("" when absent): read in one go, since the live part of a
        page is replaced every two seconds."""
        value = self.js(f"var e = document.querySelector({selector!r}); return e ? e.textContent : '';")
        return str(value).strip()

    def body(self) -> str:
        return str(self.js("return document.body ? document.body.innerText : '';"))

    def until(self, check: Any, what: str, polls: int = 600) -> None:
        def safe() -> bool:
            try:
                return bool(check())
            except (WebDriverException, ValueError, TypeError):  # a page mid-navigation or mid-swap
                return False

        try:
            until(safe, what, polls=polls, every=0.1)
        except AssertionError:
            self.shot("failed")
            raise AssertionError(
                f"never: {what}; at {self.driver.current_url}:\n{self.body()[:2000]}"
            ) from None

    def click_and_confirm(self, button_id: str) -> str:
        """Press a steering button and accept its confirmation; the dialog's text."""
        self.driver.find_element("id", button_id).click()
        alert: list[Any] = []

        def dialog() -> bool:
            alert[:] = [self.driver.switch_to.alert]
            return True

        self.until(dialog, f"a confirmation after pressing {button_id}")
        words = str(alert[0].text)
        alert[0].accept()
        return words

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, stack: LocalStack) -> Iterator[Browser]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM is not None and CHROMEDRIVER is not None
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        base = f"http://127.0.0.1:{stack.port('api')}"
        yield Browser(driver, base, tmp_path_factory.mktemp("screenshots"))
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def endpoint(stack: LocalStack, project: tuple[Path, dict]) -> str:
    """dash-ep: blue takes all traffic, green is ready for a rollout; its primary key."""
    root, _ = project
    (root / "dash-endpoint.yml").write_text(ENDPOINT)
    (root / "dash-rollout.yml").write_text(ROLLOUT)
    stack.ok("online-endpoint", "create", "--name", EP, "-f", "dash-endpoint.yml", cwd=root)
    stack.ok(
        "online-deployment", "create", "-n", "blue", "-e", EP, "-f", "blue.yml", "--all-traffic", cwd=root
    )
    stack.ok("online-deployment", "create", "-n", "green", "-e", EP, "-f", "green.yml", cwd=root)
    return stack.key(EP)


@pytest.fixture(scope="module")
def printing(stack: LocalStack, project: tuple[Path, dict]) -> str:
    """dash-logs: deployment blue, two instances of a model that prints each request's tag,
    one request at a time each; its primary key."""
    root, _ = project
    (root / "code-prints").mkdir(exist_ok=True)
    (root / "code-prints" / "score.py").write_text(SCORE_PRINTS)
    (root / "prints.yml").write_text(deployment_yaml("blue", "model-1", "code-prints", endpoint=LOGS_EP))
    return stack.serve(LOGS_EP, root, "prints.yml", "instance_count=2")


@pytest.fixture(scope="module")
def mixed(stack: LocalStack, project: tuple[Path, dict]) -> str:
    """dash-mix: blue (the project's model) takes all traffic; green serves SCORE_MIXED with a
    1 s request timeout; the endpoint allows MIX_RATE requests/s. Its primary key."""
    root, _ = project
    (root / "mix-endpoint.yml").write_text(MIX_ENDPOINT)
    (root / "code-mixed").mkdir(exist_ok=True)
    (root / "code-mixed" / "score.py").write_text(SCORE_MIXED)
    (root / "mix-green.yml").write_text(
        GREEN_TIMEOUT + deployment_yaml("green", "model-1", "code-mixed", endpoint=MIX_EP)
    )
    stack.ok("online-endpoint", "create", "--name", MIX_EP, "-f", "mix-endpoint.yml", cwd=root)
    stack.ok(
        "online-deployment", "create", "-n", "blue", "-e", MIX_EP, "-f", "blue.yml", "--all-traffic", cwd=root
    )
    stack.ok("online-deployment", "create", "-n", "green", "-e", MIX_EP, "-f", "mix-green.yml", cwd=root)
    return stack.key(MIX_EP)


def send(
    stack: LocalStack, key: str, bodies: list[bytes], *, deployment: str | None = None, at_once: bool = False
) -> list[tuple[int, str | None]]:
    """Each body to MIX_EP, all at once, or one after another at under MIX_RATE a second (so
    the endpoint's rate refuses none of them): (status, the 429's limit)."""

    async def one(session: aiohttp.ClientSession, body: bytes) -> tuple[int, str | None]:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        if deployment is not None:
            headers["azureml-model-deployment"] = deployment
        async with session.post(
            f"{stack.http_base}/endpoints/{MIX_EP}/score", data=body, headers=headers
        ) as r:
            answer = await r.read()
            return r.status, json.loads(answer)["error"].get("limit") if r.status == 429 else None

    async def every() -> list[tuple[int, str | None]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            if at_once:
                return list(await asyncio.gather(*(one(session, body) for body in bodies)))
            answers = []
            for body in bodies:
                answers.append(await one(session, body))
                await asyncio.sleep(2 / MIX_RATE)
            return answers

    return asyncio.run(every())


def score_tags(stack: LocalStack, key: str, tags: list[str], request_id: str | None = None) -> None:
    """Every tag at once: with one slot per instance, both instances serve some."""

    async def one(session: aiohttp.ClientSession, tag: str) -> None:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        if request_id is not None:
            headers["x-request-id"] = request_id
        async with session.post(
            f"{stack.http_base}/endpoints/{LOGS_EP}/score", data=json.dumps({"tag": tag}), headers=headers
        ) as response:
            assert response.status == 200, await response.text()

    async def every() -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(one(session, tag) for tag in tags))

    asyncio.run(every())


def sign_in(browser: Browser, stack: LocalStack, path: str) -> None:
    """Open ``path``, through the login form when the browser has no session yet."""
    browser.open(path)
    browser.until(lambda: browser.js("return document.readyState") == "complete", "the page loaded")
    if "/login" in browser.driver.current_url:
        token = stack.control_headers()["Authorization"].removeprefix("Bearer ")
        browser.driver.find_element("id", "credential").send_keys(token)
        browser.driver.find_element("css selector", "button[type=submit]").click()
        browser.until(lambda: "/login" not in browser.driver.current_url, "signed in")


def fetch(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, dict[str, str], str]:
    """One request without following redirects: (status, headers, body)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *_: Any, **__: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def test_signed_out_a_page_sends_the_login_form_and_the_api_answers_401(
    stack: LocalStack, endpoint: str
) -> None:
    base = f"http://127.0.0.1:{stack.port('api')}"
    status, headers, _ = fetch(f"{base}/ui/endpoints/{EP}")
    assert status == 303 and headers["Location"] == f"/login?next=%2Fui%2Fendpoints%2F{EP}"
    status, _, body = fetch(f"{base}/ui/api/endpoints")
    assert status == 401 and "control credential" in body
    status, _, body = fetch(f"{base}/ui/api/endpoints", headers=stack.control_headers())
    assert status == 200 and f'"name": "{EP}"'.replace(" ", "") in body.replace(" ", "")
    assert endpoint not in body  # the key never leaves the control plane


def test_a_person_watches_a_rollout_pauses_it_and_rolls_it_back(
    stack: LocalStack, project: tuple[Path, dict], endpoint: str, browser: Browser
) -> None:
    root, _ = project
    token = stack.control_headers()["Authorization"].removeprefix("Bearer ")

    # Signed out, the dashboard sends the login form, which comes back to the page asked for.
    browser.open(f"/ui/endpoints/{EP}")
    browser.until(lambda: "/login" in browser.driver.current_url, "the login form")
    browser.driver.find_element("id", "credential").send_keys(token)
    browser.driver.find_element("css selector", "button[type=submit]").click()
    browser.until(lambda: browser.driver.current_url.endswith(f"/ui/endpoints/{EP}"), "back on the endpoint")
    assert token not in browser.driver.page_source

    # A hostile tag is text on the page, and never ran.
    browser.until(lambda: HOSTILE in browser.body(), "the owner tag shown as text")
    assert browser.js("return window.__pwned === undefined") is True
    assert browser.js("return document.querySelectorAll('main script').length") == 0
    assert "<b>not bold</b>" in browser.body()
    assert endpoint not in browser.driver.page_source

    # A known mix: refused requests (4xx, not failures of the endpoint) and the load's answers.
    refused = 7
    for _ in range(refused):
        status, _, _ = fetch(
            f"{stack.http_base}/endpoints/{EP}/score",
            method="POST",
            headers={"Authorization": "Bearer not-the-key", "Content-Type": "application/json"},
            data=BODY,
        )
        assert status == 401
    with SteadyLoad(f"{stack.http_base}/endpoints/{EP}/score", endpoint, BODY, concurrency=2) as load:
        # The endpoints list: the endpoint, its URI, and its traffic measured.
        browser.open("/ui/")
        browser.until(lambda: browser.text(f"tr[data-endpoint='{EP}'] a") == EP, "the endpoint listed")
        assert f"{EP}." in browser.text(f"tr[data-endpoint='{EP}'] code") or EP in browser.body()
        browser.until(
            lambda: float(browser.text(f"tr[data-endpoint='{EP}'] .rps") or 0) > 0, "requests/s above 0"
        )
        browser.until(lambda: "1 h: 100.000 %" in browser.body(), "availability over the last hour")
        assert "SLO 99.9 %" in browser.body()

        stack.ok(
            "rollout",
            "start",
            "--endpoint",
            EP,
            "--to",
            "green",
            "-f",
            "dash-rollout.yml",
            "--no-wait",
            cwd=root,
        )
        browser.open(f"/ui/endpoints/{EP}/rollout")
        weights: set[str] = set()

        def weight_seen() -> bool:
            weights.add(browser.text(".w[data-deployment='green']"))
            return "green 40 %" in weights or "green 70 %" in weights

        # The live part refreshes in place: the weights change without a reload.
        browser.js("window.__samePage = true")
        browser.until(weight_seen, "green's weight moving past 10 %")
        browser.until(lambda: browser.text(".w[data-deployment='green']") == "green 70 %", "green at 70 %")
        assert browser.js("return window.__samePage === true") is True, (
            "the page reloaded instead of updating"
        )
        assert browser.text(".step.current").startswith("70 %")
        # 10 % and 40 % done; the plan ends at 100 %, still to come.
        steps = (
            "return Array.from(document.querySelectorAll('.step'), e => e.className + ' ' + e.textContent)"
        )
        assert [" ".join(str(step).split()[:3]) for step in browser.js(steps)] == [
            "step done 10",
            "step done 40",
            "step current 70",
            "step todo 100",
        ]
        browser.until(lambda: browser.text(".gate .value") not in ("", "–"), "a gate's value")
        assert browser.text(".gate .verdict") in ("pass", "fail", "no_data", "inconclusive")
        assert "<= 0.05" in browser.text(".gate") or "0.05" in browser.text(".gate")
        browser.until(lambda: browser.text(".event-weights"), "a weights event")
        browser.until(
            lambda: browser.js("return document.querySelectorAll('.gate-charts polyline').length") >= 1,
            "the gate's value drawn against its threshold",
        )
        assert "Temporal UI" in browser.text("a.temporal")
        assert "rollout%2Fdash-ep%2F" in browser.js("return document.querySelector('a.temporal').href")

        browser.open(f"/ui/endpoints/{EP}")
        browser.until(
            lambda: browser.text("section[data-deployment='green'] .weight") == "70 %",
            "green at 70 % on the endpoint",
        )
        browser.until(
            lambda: float(browser.text("section[data-deployment='green'] .dep-rps") or 0) > 0, "green serving"
        )
        browser.until(
            lambda: browser.js("return document.querySelectorAll('section.deployment polyline').length") >= 4,
            "charts with lines",
        )
        green = "return document.querySelector(\"[data-deployment='green'] polyline\").getAttribute('points')"
        browser.until(lambda: len(browser.js(green).split()) >= 6, "a few samples of green")
        endpoint_shot = browser.shot("endpoint-under-rollout")

        # A signal the rollout would ignore is refused on the page, saying why.
        browser.open(f"/ui/endpoints/{EP}/rollout")
        browser.click_and_confirm("resume")
        browser.until(
            lambda: "only a Paused rollout can be resumed" in browser.text(".problem"), "resume refused"
        )
        assert str(browser.js("return document.getElementById('live').dataset.refresh")).endswith(
            f"/ui/endpoints/{EP}/rollout?part=live"
        )

        # Pause from the page: the CLI sees it.
        assert "Pause rollout" in browser.click_and_confirm("pause")
        browser.until(lambda: "Sent pause." in browser.body(), "the pause acknowledged")
        until(
            lambda: stack.json("rollout", "status", "--endpoint", EP)["phase"] == "Paused",  # type: ignore[index]
            "rollout status saying Paused",
            polls=300,
        )
        browser.until(lambda: browser.text("#phase") == "Paused", "the page saying Paused")

        # A POST carrying the session but not the CSRF token is refused, and changes nothing.
        cookie = browser.driver.get_cookie("tidegate_session")
        assert cookie is not None and cookie["httpOnly"] is True
        status, _, body = fetch(
            f"{browser.base}/ui/endpoints/{EP}/rollout/resume",
            method="POST",
            headers={"Cookie": f"tidegate_session={cookie['value']}", "Origin": browser.base},
            data=b"",
        )
        assert status == 403 and "CSRF" in body
        assert stack.json("rollout", "status", "--endpoint", EP)["phase"] == "Paused"  # type: ignore[index]

        # Roll back from the page, with a reason: an event, the weights back on blue.
        browser.driver.find_element("css selector", "form[action$='/rollback'] input[name=reason]").send_keys(
            "p99 looks odd <i>here</i>"
        )
        assert "Roll back rollout" in browser.click_and_confirm("rollback")
        browser.until(lambda: browser.text(".event-rolledback"), "a rolledback event")
        browser.until(lambda: browser.text("#phase") == "RolledBack", "the page saying RolledBack")
        assert "p99 looks odd <i>here</i>" in browser.body()
        browser.until(
            lambda: browser.text(".w[data-deployment='blue']") == "blue 100 %", "blue back at 100 %"
        )
        rolled_back_shot = browser.shot("rollout-rolled-back")
        assert load.failures_from("blue") == 0

    # The page's figures are the gateway's counts for the mix sent: every request counted, no
    # failure among them (a 401 is the client's), and `online-endpoint show` agrees.
    sent = sum(load.seen.values()) + refused
    assert load.seen[("-", 0)] == 0
    admin = f"http://127.0.0.1:{stack.port('gateway_admin')}"
    minutes = stack.control_json(f"{admin}/stats?endpoint={EP}&minutes=60")["minutes"]
    assert sum(m["requests"] for m in minutes) == sent
    assert sum(m["status"]["4xx"] for m in minutes) >= refused
    browser.open("/ui/")
    row = f"tr[data-endpoint='{EP}'] .avail"
    browser.until(
        lambda: browser.js(f"return document.querySelector({row!r}).dataset.hourRequests") == str(sent),
        f"the endpoints page counting the {sent} requests sent",
    )
    assert browser.js(f"return document.querySelector({row!r}).dataset.hourFailures") == "0"
    shown = stack.json("online-endpoint", "show", "-n", EP, "--query", "availability")
    assert isinstance(shown, dict), shown
    assert shown["slo_percent"] == 99.9 and shown["failure_statuses"] == ["5xx", "408"]
    assert shown["last_hour"]["requests"] == sent and shown["last_hour"]["failures"] == 0
    assert shown["last_hour"]["availability_percent"] == 100.0
    assert shown["last_hour"]["error_budget_remaining"] == 1.0 and shown["last_hour"]["burn_rate"] == 0.0

    if os.environ.get("TIDEGATE_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(endpoint_shot, DOCS / "dashboard-endpoint.png")
        shutil.copyfile(rolled_back_shot, DOCS / "dashboard-rollout.png")


def test_a_person_reads_a_deployments_logs_filters_them_and_follows_them(
    stack: LocalStack, printing: str, browser: Browser
) -> None:
    run = uuid.uuid4().hex[:8]
    tags = [f"early-{run}-{n}" for n in range(8)]
    score_tags(stack, printing, [*tags, HOSTILE_LOG])
    marked = f"rid-{run}"
    score_tags(stack, printing, [f"marked-{run}"], request_id=marked)
    logs = f"/ui/endpoints/{LOGS_EP}/deployments/blue/logs"

    # From the endpoint page, each deployment links to its logs.
    sign_in(browser, stack, f"/ui/endpoints/{LOGS_EP}")
    browser.until(lambda: browser.text("section[data-deployment='blue'] a.logs") == "logs", "the logs link")
    browser.driver.find_element("css selector", "section[data-deployment='blue'] a.logs").click()
    browser.until(lambda: browser.driver.current_url.endswith(logs), "on the logs page")

    # Every instance's tail, the model's print()s in it; the hostile line is text and never ran.
    sections = (
        "return Array.from(document.querySelectorAll('section.log'),"
        " e => [e.dataset.instance, e.textContent])"
    )
    by_instance: dict[str, str] = {}

    def both_printed() -> bool:
        browser.open(logs)
        by_instance.clear()
        by_instance.update({str(i): str(t) for i, t in browser.js(sections)})
        return len(by_instance) == 2 and all("scoring tag early-" in t for t in by_instance.values())

    browser.until(both_printed, "both instances' print() lines", polls=100)
    body = browser.body()
    assert all(f"scoring tag {tag}" in body for tag in tags)
    assert f"scoring tag {HOSTILE_LOG}" in body
    assert browser.js("return window.__pwnedLog === undefined") is True
    assert browser.js("return document.querySelectorAll('main script').length") == 0
    assert printing not in browser.driver.page_source
    options = browser.js("return Array.from(document.querySelectorAll('#instance option'), o => o.value)")
    assert options == ["", *sorted(by_instance)]

    # Filter by instance: that instance's lines only.
    first, second = sorted(by_instance)
    theirs = [tag for tag in tags if tag in by_instance[second] and tag not in by_instance[first]]
    assert theirs, by_instance
    Select(browser.driver.find_element("id", "instance")).select_by_value(first)
    browser.driver.find_element("id", "show").click()
    browser.until(lambda: f"instance={first}" in browser.driver.current_url, "the instance filter applied")
    assert [str(i) for i, _ in browser.js(sections)] == [first]
    text = browser.text("section.log")
    assert "scoring tag early-" in text and not any(tag in text for tag in theirs)
    assert browser.js("return document.getElementById('live').dataset.refresh") is None  # not following

    # By request id: the gateway's access-log line and the one print() of that request.
    browser.driver.find_element("id", "request_id").send_keys(marked)
    Select(browser.driver.find_element("id", "instance")).select_by_value("")
    browser.driver.find_element("id", "show").click()
    browser.until(lambda: browser.text("section.log.access"), "the request's access-log line")
    assert marked in browser.text("section.log.access")
    body = browser.body()
    assert f"scoring tag marked-{run}" in body and "early-" not in body

    # Follow one instance: new lines appear without a reload, still that instance's only.
    browser.open(f"{logs}?instance={first}")
    browser.driver.find_element("id", "follow").click()
    browser.driver.find_element("id", "show").click()
    browser.until(lambda: browser.js("return document.getElementById('live').dataset.refresh"), "following")
    refresh = str(browser.js("return document.getElementById('live').dataset.refresh"))
    assert f"instance={first}" in refresh and "follow=1" in refresh and refresh.endswith("part=live")
    browser.js("window.__samePage = true")
    late = [f"late-{run}-{n}" for n in range(4)]  # four at once on two one-slot instances
    score_tags(stack, printing, late)
    browser.until(lambda: "scoring tag late-" in browser.text("section.log"), "a new line followed")
    assert browser.js("return window.__samePage === true") is True
    assert [str(i) for i, _ in browser.js(sections)] == [first]
    browser.shot("deployment-logs")


def test_429s_by_reason_and_each_deployments_availability_match_the_gateways_counts(
    stack: LocalStack, mixed: str, browser: Browser
) -> None:
    """A known mix: good answers from blue; on green, the model raising (424) and timing out
    (408, a failure); then the endpoint driven over its max_requests_per_second while the page
    is open. The page, `online-endpoint show` and the gateway's windows say the same."""
    good, raising, slow = 8, 3, 2
    answers = send(stack, mixed, [BODY] * good)
    answers += send(
        stack, mixed, [b'{"fail": true}'] * raising + [b'{"sleep_s": 2}'] * slow, deployment="green"
    )
    assert [status for status, _ in answers] == [200] * good + [424] * raising + [408] * slow

    sign_in(browser, stack, f"/ui/endpoints/{MIX_EP}")
    rate_chart = "section[data-scope='endpoint'] figure.chart:nth-of-type(2)"
    browser.until(lambda: "429s/s by reason" in browser.text(f"{rate_chart} figcaption"), "the 429 chart")
    assert browser.text(f"{rate_chart} figcaption .key-0").startswith("endpoint_rate: ")
    # Over the rate while the page watches: three bursts of three seconds' worth, a second apart.
    burst: list[tuple[int, str | None]] = []
    for _ in range(3):
        burst += send(stack, mixed, [BODY] * (3 * MIX_RATE), at_once=True)
        time.sleep(1)
    limited = [limit for status, limit in burst if status == 429]
    assert "endpoint_rate" in limited and {status for status, _ in burst} <= {200, 429}
    browser.until(
        lambda: float(browser.text(f"{rate_chart} figcaption .key-0").removeprefix("endpoint_rate: ")) > 0,
        "429s for the endpoint's rate drawn",
    )
    points = f"return document.querySelector({rate_chart + ' polyline'!r}).getAttribute('points')"
    drawn = [float(xy.split(",")[1]) for xy in str(browser.js(points)).split()]
    assert min(drawn) < max(drawn), drawn  # a line that rose above zero, not a flat one
    browser.shot("endpoint-429-by-reason")

    # The gateway's own counts: each 429 under the reason its body named, each deployment with
    # what it served.
    admin = f"http://127.0.0.1:{stack.port('gateway_admin')}"

    def window(deployment: str) -> dict[str, Any]:
        return dict(stack.control_json(f"{admin}/stats?endpoint={MIX_EP}&deployment={deployment}&minutes=60"))

    everything = answers + burst
    whole, blue, green = window(""), window("blue"), window("green")
    assert whole["limited"]["endpoint_rate"] == limited.count("endpoint_rate")
    assert blue["limited"]["endpoint_rate"] == green["limited"]["endpoint_rate"] == 0
    assert blue["limited"]["queue_wait"] + blue["limited"]["instance_concurrency"] == len(
        limited
    ) - limited.count("endpoint_rate")
    served_by_blue = good + sum(1 for status, limit in burst if status == 200 or limit != "endpoint_rate")
    assert sum(m["requests"] for m in blue["minutes"]) == served_by_blue
    assert sum(m["requests"] for m in green["minutes"]) == raising + slow
    assert sum(m["requests"] for m in whole["minutes"]) == len(everything)

    # `online-endpoint show`: the endpoint's figures as before, and each deployment's own.
    shown = stack.json("online-endpoint", "show", "-n", MIX_EP, "--query", "availability")
    assert isinstance(shown, dict), shown
    assert shown["slo_percent"] == 99.0
    assert (shown["last_hour"]["requests"], shown["last_hour"]["failures"]) == (len(everything), slow)
    by_deployment = shown["deployments"]
    assert by_deployment["blue"]["last_hour"] == {
        "availability_percent": 100.0,
        "requests": served_by_blue,
        "failures": 0,
        "error_budget_remaining": 1.0,
        "burn_rate": 0.0,
    }
    green_hour = by_deployment["green"]["last_hour"]
    assert (green_hour["requests"], green_hour["failures"]) == (raising + slow, slow)
    assert green_hour["availability_percent"] == pytest.approx(100.0 * raising / (raising + slow))
    assert green_hour["burn_rate"] == pytest.approx((slow / (raising + slow)) / 0.01)
    assert green_hour["error_budget_remaining"] == pytest.approx(1 - slow / (0.01 * (raising + slow)))
    # With the model's 424s counted as failures too (the setting), green failed every request.
    strict = stack.with_settings(availability_failure_statuses='["5xx","408","424"]')
    shown = strict.json("online-endpoint", "show", "-n", MIX_EP, "--query", "availability")
    assert isinstance(shown, dict), shown
    assert shown["deployments"]["green"]["last_hour"]["failures"] == raising + slow

    # The page: each deployment's availability on what it served.
    for name, requests, failures in (("blue", served_by_blue, 0), ("green", raising + slow, slow)):
        avail = f"section[data-deployment='{name}'] .avail"
        browser.until(
            lambda avail=avail, requests=requests: (
                browser.js(f"return document.querySelector({avail!r}).dataset.hourRequests") == str(requests)
            ),
            f"{name}'s {requests} requests on the page",
        )
        assert browser.js(f"return document.querySelector({avail!r}).dataset.hourFailures") == str(failures)
    browser.shot("endpoint-availability-by-deployment")
