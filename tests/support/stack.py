"""A whole Tidegate stack on its own home and ports, driven the way a user drives it."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.settings import Settings
from tests.support.ports import free_ports, instance_port_start

TEST_APP_INSIGHTS_KEY = "00000000-1111-2222-3333-444444444444"


@dataclass
class LocalStack:
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, home: Path) -> LocalStack:
        ports = free_ports(7)
        env = dict(
            os.environ,
            TIDEGATE_HOME=str(home),
            TIDEGATE_TEMPORAL_PORT=str(ports[0]),
            TIDEGATE_TEMPORAL_UI_PORT=str(ports[1]),
            TIDEGATE_GATEWAY_HTTPS_PORT=str(ports[2]),
            TIDEGATE_GATEWAY_HTTP_PORT=str(ports[3]),
            TIDEGATE_GATEWAY_ADMIN_PORT=str(ports[4]),
            TIDEGATE_HOST_PORT=str(ports[5]),
            TIDEGATE_INSTANCE_PORT_START=str(instance_port_start()),
            TIDEGATE_API_PORT=str(ports[6]),
            # Only deployments with app_insights_enabled get it (an export that cannot reach Azure).
            TIDEGATE_APP_INSIGHTS_KEY=TEST_APP_INSIGHTS_KEY,
        )
        return cls(home=home, env=env)

    def with_settings(self, **values: object) -> LocalStack:
        """The same stack, driven by a CLI that has these settings as well
        (`scale_in_cooldown_seconds=3` is TIDEGATE_SCALE_IN_COOLDOWN_SECONDS=3): the ones the
        client façade reads, such as the autoscale cool-down it writes into a deployment."""
        extra = {f"TIDEGATE_{name.upper()}": str(value) for name, value in values.items()}
        return LocalStack(home=self.home, env={**self.env, **extra})

    def settings(self) -> Settings:
        """The settings the CLI runs with, for a test that calls the client façade itself."""
        prefix = "TIDEGATE_"
        ours = {k.removeprefix(prefix).lower(): v for k, v in self.env.items() if k.startswith(prefix)}
        return Settings(**ours)

    def port(self, name: str) -> int:
        return int(self.env[f"TIDEGATE_{name.upper()}_PORT"])

    def tidegate(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the CLI as a user would; the result carries exit code, stdout and stderr."""
        return subprocess.run(
            [sys.executable, "-m", "control.cli", *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
        )

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        done = self.tidegate(*args, cwd=cwd)
        assert done.returncode == 0, f"tidegate {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout.strip()

    def json(self, *args: str, cwd: Path | None = None) -> object:
        return json.loads(self.ok(*args, "-o", "json", cwd=cwd))

    def up(self) -> None:
        self.ok("up", "--detach")

    def down(self) -> None:
        self.tidegate("down")

    def pids(self) -> dict[str, int]:
        from control.stack import read_pids

        return read_pids(self.settings())

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port('gateway_http')}"

    @property
    def https_base(self) -> str:
        return f"https://localhost:{self.port('gateway_https')}"

    def control_headers(self) -> dict[str, str]:
        """What a caller of the gateway's admin API or the host API sends."""
        token = self.env.get("TIDEGATE_CONTROL_TOKEN") or (self.home / "control.token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def control_json(self, url: str) -> Any:
        """GET a control surface of this stack (host API, gateway admin) with the credential."""
        request = urllib.request.Request(url, headers=self.control_headers())
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.home / "tls" / "ca.pem"))

    def key(self, endpoint: str, which: str = "primaryKey") -> str:
        return self.ok("online-endpoint", "get-credentials", "-n", endpoint, "-o", "tsv", "--query", which)

    def serve(self, endpoint: str, root: Path, file: str = "blue.yml", *assignments: str) -> str:
        """``endpoint`` from root/endpoint.yml with deployment blue from ``file`` (each of
        ``assignments`` a ``--set path=value``) taking all traffic; returns its primary key."""
        self.ok("online-endpoint", "create", "--name", endpoint, "-f", "endpoint.yml", cwd=root)
        sets = [arg for assignment in assignments for arg in ("--set", assignment)]
        self.ok(
            "online-deployment",
            "create",
            "-n",
            "blue",
            "-e",
            endpoint,
            "-f",
            file,
            "--all-traffic",
            *sets,
            cwd=root,
        )
        return self.key(endpoint)
