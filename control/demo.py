"""`make demo`: the Azure ML walk-through, run with `tidegate` against the local system."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from config.settings import load_settings

SAMPLES = Path(__file__).resolve().parent.parent / "config" / "samples"
ENDPOINT = "demo-ep"


def tidegate(*args: str, check: bool = True) -> str:
    argv = [sys.executable, "-m", "control.cli", *args]
    print(f"\n$ tidegate {shlex.join(args)}", flush=True)
    done = subprocess.run(argv, cwd=SAMPLES, capture_output=True, text=True)
    out = done.stdout.strip()
    if out:
        print(out, flush=True)
    if done.returncode != 0:
        print(done.stderr.strip(), file=sys.stderr, flush=True)
        if check:
            sys.exit(done.returncode)
    return out


def main() -> None:
    settings = load_settings()
    existing = tidegate("online-endpoint", "list", "--query", "[].name", "-o", "tsv")
    if ENDPOINT in existing.split():
        tidegate("online-endpoint", "update", "-n", ENDPOINT, "--traffic", "blue=100 green=0", check=False)
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
    uri = tidegate("online-endpoint", "show", "-n", ENDPOINT, "--query", "scoring_uri", "-o", "tsv")
    tidegate("online-endpoint", "get-credentials", "-n", ENDPOINT, "-o", "tsv", "--query", "primaryKey")
    ca = settings.tls_dir / "ca.pem"
    print(
        "\nCall it yourself:\n"
        f"  KEY=$(tidegate online-endpoint get-credentials -n {ENDPOINT} -o tsv --query primaryKey)\n"
        f'  curl --cacert {ca} -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" '
        f"-d @{SAMPLES / 'sample-request.json'} {uri}\n"
        f"\nTemporal UI: {settings.temporal_ui_url}  (workflows endpoint/{ENDPOINT}, "
        f"deployment/{ENDPOINT}/blue, deployment/{ENDPOINT}/green)\n"
        "Stop everything with: tidegate down"
    )


if __name__ == "__main__":
    main()
