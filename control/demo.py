"""`make demo`: the Azure ML walk-through, run with `tidegate` against the local system."""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from config.settings import Settings, load_settings

SAMPLES = Path(__file__).resolve().parent.parent / "config" / "samples"
ENDPOINT = "demo-ep"


def tidegate(*args: str, check: bool = True, echo: bool = True) -> str:
    argv = [sys.executable, "-m", "control.cli", *args]
    if echo:
        print(f"\n$ tidegate {shlex.join(args)}", flush=True)
    done = subprocess.run(argv, cwd=SAMPLES, capture_output=True, text=True)
    out = done.stdout.strip()
    if out and echo:
        print(out, flush=True)
    if done.returncode != 0:
        print(done.stderr.strip(), file=sys.stderr, flush=True)
        if check:
            sys.exit(done.returncode)
    return out


@contextlib.contextmanager
def steady_load(settings: Settings, endpoint: str) -> Iterator[None]:
    """A client calling the endpoint while the rollout runs: the gates judge its requests."""
    key = tidegate(
        "online-endpoint", "get-credentials", "-n", endpoint, "-o", "tsv", "--query", "primaryKey", echo=False
    )
    body = (SAMPLES / "sample-request.json").read_bytes()
    url = f"http://127.0.0.1:{settings.gateway_http_port}/endpoints/{endpoint}/score"
    stop = threading.Event()

    def call() -> None:
        request = urllib.request.Request(
            url, data=body, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        )
        while not stop.is_set():
            try:
                urllib.request.urlopen(request, timeout=10).read()
            except OSError:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def main() -> None:
    settings = load_settings()
    existing = tidegate("online-endpoint", "list", "--query", "[].name", "-o", "tsv")
    if ENDPOINT in existing.split():
        tidegate("rollout", "rollback", "--endpoint", ENDPOINT, check=False)
        tidegate("online-endpoint", "delete", "-n", ENDPOINT, "--yes")
    tidegate("online-endpoint", "create", "--name", ENDPOINT, "-f", "endpoint.yml")
    tidegate(
        "online-deployment",
        "create",
        "--name",
        "blue",
        "--endpoint",
        ENDPOINT,
        "-f",
        "blue-deployment.yml",
        "--all-traffic",
        "--query",
        "provisioning_state",
        "-o",
        "tsv",
    )
    tidegate("online-endpoint", "invoke", "--name", ENDPOINT, "--request-file", "sample-request.json")
    tidegate(
        "online-deployment",
        "create",
        "--name",
        "green",
        "--endpoint",
        ENDPOINT,
        "-f",
        "green-deployment.yml",
        "--query",
        "provisioning_state",
        "-o",
        "tsv",
    )
    tidegate(
        "online-endpoint",
        "invoke",
        "--name",
        ENDPOINT,
        "--deployment-name",
        "green",
        "--request-file",
        "sample-request.json",
    )
    tidegate(
        "online-endpoint", "update", "--name", ENDPOINT, "--traffic", "blue=90 green=10", "--query", "traffic"
    )
    tidegate("rollout", "plan", "--endpoint", ENDPOINT, "--to", "green", "-f", "rollout.yml")
    with steady_load(settings, ENDPOINT):
        tidegate(
            "rollout",
            "start",
            "--endpoint",
            ENDPOINT,
            "--to",
            "green",
            "-f",
            "rollout.yml",
            "--query",
            "phase",
        )
    tidegate("online-endpoint", "invoke", "--name", ENDPOINT, "--request-file", "sample-request.json")
    uri = tidegate("online-endpoint", "show", "-n", ENDPOINT, "--query", "scoring_uri", "-o", "tsv")
    tidegate("online-endpoint", "get-credentials", "-n", ENDPOINT, "-o", "tsv", "--query", "primaryKey")
    ca = settings.tls_dir / "ca.pem"
    print(
        "\nCall it yourself:\n"
        f"  KEY=$(tidegate online-endpoint get-credentials -n {ENDPOINT} -o tsv --query primaryKey)\n"
        f'  curl --cacert {ca} -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" '
        f"-d @{SAMPLES / 'sample-request.json'} {uri}\n"
        f"\nTemporal UI: {settings.temporal_ui_url}  (workflows endpoint/{ENDPOINT}, "
        f"deployment/{ENDPOINT}/blue, deployment/{ENDPOINT}/green, rollout/{ENDPOINT}/1)\n"
        f"Roll back to blue while it is still warm: tidegate rollout undo --endpoint {ENDPOINT}\n"
        "Stop everything with: tidegate down"
    )


if __name__ == "__main__":
    main()
