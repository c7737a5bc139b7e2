"""The Temporal UI in a real browser (headless Chromium, driven over the DevTools protocol)
shows a deployment's secret only once its user has signed in at `tidegate api`'s /login and
turned "include cross-origin credentials" on in the UI's Data Encoder settings.

Skipped where Chromium is not installed (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from config.binaries import find_binary
from config.contract.temporal_client import connect
from control.api_server import codec_endpoint
from tests.control.conftest import ApiProcess
from workflows import search

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SECRET = "s3cr3t-db-password-ui-5be0"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")


class Page:
    """One browser tab over the DevTools protocol: enough to navigate and read the page."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        async for message in self._ws:
            reply = json.loads(message.data)
            if reply.get("id") == call_id:  # events in between are not ours to read
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]
        raise AssertionError("the browser closed the connection")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def until(self, expression: str, what: str, polls: int = 300) -> None:
        for _ in range(polls):  # a bound on polls, not a time limit
            if await self.evaluate(expression):
                return
            await asyncio.sleep(0.1)
        text = await self.evaluate("location.href + '\\n' + (document.body ? document.body.innerText : '')")
        raise AssertionError(f"never: {what}; the page:\n{str(text)[:1500]}")

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        there = json.dumps(url.split("?")[0])
        await self.until(
            f"location.href.startsWith({there}) && document.readyState === 'complete'", f"{url} loaded"
        )

    async def shows(self, text: str) -> bool:
        return bool(await self.evaluate(f"document.documentElement.outerHTML.includes({json.dumps(text)})"))


@pytest_asyncio.fixture(loop_scope="session")
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    profile = tmp_path / "profile"
    browser = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active = profile / "DevToolsActivePort"
        for _ in range(300):  # a bound on polls, not a time limit
            if active.exists() and len(active.read_text().splitlines()) == 2:
                break
            await asyncio.sleep(0.1)
        port = int(active.read_text().splitlines()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                tab = next(t for t in await response.json() if t["type"] == "page")
            async with session.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield Page(ws)
    finally:
        browser.terminate()
        browser.wait()


@pytest_asyncio.fixture(loop_scope="session")
async def ui(api: ApiProcess) -> AsyncIterator[WorkflowEnvironment]:
    """A dev server with its UI on the port the API allows, told (as `tidegate up` tells it)
    where the codec endpoint is."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        dev_server_extra_args=[
            *search.dev_server_flags(),
            "--ui-codec-endpoint",
            codec_endpoint(api.settings()),
        ],
        ui=True,
        ui_port=api.ui_port,
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def test_the_ui_shows_the_secret_only_to_a_signed_in_browser(
    ui: WorkflowEnvironment, api: ApiProcess, page: Page
) -> None:
    settings = api.settings(temporal_address=ui.client.service_client.config.target_host)
    client = await connect(settings)
    handle = await client.start_workflow(
        "DeploymentWorkflow",
        {"environment_variables": {"DB_PASSWORD": SECRET}},
        id=f"deployment/ui-probe/{uuid.uuid4().hex[:8]}",
        task_queue="no-worker-needed",  # the input is in the history from the first event
    )
    workflow = urllib.parse.quote(handle.id, safe="")  # Tidegate's ids hold '/'
    workflow_page = f"{api.ui_origin}/namespaces/default/workflows/{workflow}/{handle.result_run_id}/history"

    # The UI's Data Encoder, as a user sets it: this browser's settings over the cluster's.
    await page.open(f"{api.ui_origin}/")
    for key, value in {
        "endpoint": codec_endpoint(api.settings()),
        "includeCredentials": True,
        "passAccessToken": False,
        "overrideRemoteCodecConfiguration": True,
    }.items():
        await page.evaluate(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(value))})")

    refusals = api.log_text().count('"api.unauthorized"')
    await page.open(workflow_page)
    await page.until("document.body.innerText.includes('Input')", "the workflow page rendered")
    for _ in range(300):  # a bound on polls, not a time limit
        if api.log_text().count('"api.unauthorized"') > refusals:
            break  # the UI asked to decode, without a session, and was refused
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the UI never called the codec endpoint")
    assert not await page.shows(SECRET)

    await page.open(f"{api.url}/login")
    await page.evaluate(
        f"document.getElementById('credential').value = {json.dumps(api.token)}; document.forms[0].submit()"
    )
    await page.until("document.body.innerText.includes('Signed in')", "signed in")

    await page.open(workflow_page)
    await page.until(f"document.documentElement.outerHTML.includes({json.dumps(SECRET)})", "the secret shown")
