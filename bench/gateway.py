"""Gateway benchmark: prints rps, p50 and p99 for the gateway against direct and nginx.

Rows:
  direct          a trivial backend, no proxy
  gateway         Tidegate's gateway: key auth + 90/10 split over two trivial backends
  gateway-tls     the same over HTTPS
  nginx           nginx doing the same key check (map) and 90/10 split (split_clients)
  azml-direct     azmlinfsrv serving a trivial score.py
  azml-gateway    the same through the gateway

Load: ``wrk -t1 -c32 -d10s`` when wrk is on PATH, else a Python asyncio load generator.
The trivial backend is nginx ``return 200`` when nginx is on PATH, else a small uvloop
server. Every server here listens on 127.0.0.1 only. Figures are printed, never asserted.

    .venv/bin/python bench/gateway.py [--duration 10] [--connections 32] [--no-azml]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ports import free_ports  # noqa: E402

KEY = "bench-key-0123456789abcdef"
BODY = b'{"data": [[1.0, 2.0, 3.0, 4.0]]}'
ENDPOINT = "bench-ep"
RESPONSE_BODY = b'{"ok": true}'


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    note: str = ""


# --- tools ---


def ensure_tools() -> list[str]:
    """nginx and wrk, installed with apt-get when missing and we are root; notes on what's not."""
    notes: list[str] = []
    missing = [tool for tool in ("nginx", "wrk") if _which(tool) is None]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        print(f"installing {' '.join(missing)} with apt-get ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        packages = [{"nginx": "nginx-light", "wrk": "wrk"}[tool] for tool in missing]
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, check=False)
    if _which("nginx") is None:
        notes.append("nginx not available: nginx row skipped, Python trivial backend used")
    if _which("wrk") is None:
        notes.append("wrk not available: Python asyncio load generator used")
    return notes


def _which(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (str(p) for p in (Path("/usr/sbin") / tool, Path("/sbin") / tool) if p.exists()), None
    )


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def wait_http_ok(url: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200")


class Procs:
    """Child processes, each in its own process group, stopped by their ids at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


# --- trivial backends ---

NGINX_BACKEND_CONF = """
worker_processes 1;
daemon off;
pid {work}/backend.pid;
error_log {work}/backend-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port_a};
        listen 127.0.0.1:{port_b};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""

UVLOOP_BACKEND = textwrap.dedent(
    """
    import asyncio, sys, uvloop, httptools
    BODY = %r
    RESP = (b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: "
            + str(len(BODY)).encode() + b"\\r\\n\\r\\n" + BODY)
    class P(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
            self.p = httptools.HttpRequestParser(self)
        def data_received(self, d):
            try:
                self.p.feed_data(d)
            except httptools.HttpParserError:
                self.t.close()
        def on_message_complete(self):
            self.t.write(RESP)
            if not self.p.should_keep_alive():
                self.t.close()
    async def main():
        loop = asyncio.get_running_loop()
        for port in sys.argv[1:]:
            await loop.create_server(P, "127.0.0.1", int(port), backlog=2048)
        await asyncio.Event().wait()
    uvloop.run(main())
    """
) % (RESPONSE_BODY,)


def start_backends(procs: Procs, work: Path, port_a: int, port_b: int, nginx: str | None) -> str:
    if nginx:
        conf = work / "backend.conf"
        conf.write_text(
            NGINX_BACKEND_CONF.format(work=work, port_a=port_a, port_b=port_b, body=RESPONSE_BODY.decode())
        )
        proc = procs.start([nginx, "-c", str(conf), "-p", str(work)], log=work / "backend.out")
        kind = "nginx return 200"
    else:
        script = work / "backend.py"
        script.write_text(UVLOOP_BACKEND)
        proc = procs.start([sys.executable, str(script), str(port_a), str(port_b)], log=work / "backend.out")
        kind = "uvloop trivial server"
    wait_port(port_a, proc)
    wait_port(port_b, proc)
    return kind


# --- nginx as the gateway ---

NGINX_GATEWAY_CONF = """
worker_processes 1;
daemon off;
pid {work}/ngw.pid;
error_log {work}/ngw-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    map $http_authorization $tg_key_ok {{
        "Bearer {key}" 1;
        default 0;
    }}
    split_clients "${{request_id}}" $tg_deployment {{
        90% blue;
        *   green;
    }}
    upstream blue {{ server 127.0.0.1:{port_a}; keepalive 64; }}
    upstream green {{ server 127.0.0.1:{port_b}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location = /score {{
            if ($tg_key_ok = 0) {{ return 401; }}
            proxy_pass http://$tg_deployment;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-request-id $request_id;
            add_header azureml-model-deployment $tg_deployment always;
        }}
    }}
}}
"""


def start_nginx_gateway(
    procs: Procs, work: Path, nginx: str, port: int, port_a: int, port_b: int
) -> subprocess.Popen[bytes]:
    conf = work / "ngw.conf"
    conf.write_text(NGINX_GATEWAY_CONF.format(work=work, key=KEY, port=port, port_a=port_a, port_b=port_b))
    proc = procs.start([nginx, "-c", str(conf), "-p", str(work)], log=work / "ngw.out")
    wait_port(port, proc)
    return proc


# --- Tidegate's gateway ---


def start_gateway(
    procs: Procs, work: Path, ports: dict[str, int], **extra_env: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **extra_env,
        "TIDEGATE_HOME": str(work / "home"),
        "TIDEGATE_GATEWAY_HTTPS_PORT": str(ports["https"]),
        "TIDEGATE_GATEWAY_HTTP_PORT": str(ports["http"]),
        "TIDEGATE_GATEWAY_ADMIN_PORT": str(ports["admin"]),
        "PYTHONPATH": str(REPO),
    }
    with open(work / "gateway.log", "ab") as log:  # access lines echo here: keep it small
        log.truncate(0)
    proc = procs.start([sys.executable, "-m", "gateway"], log=work / "gateway.log", env=env, cwd=REPO)
    wait_port(ports["admin"], proc)
    wait_http_ok(f"http://127.0.0.1:{ports['admin']}/healthz")
    return proc


def push_route(admin_port: int, deployments: dict[str, str], traffic: dict[str, int]) -> None:
    route = {
        "name": ENDPOINT,
        "generation": int(time.time() * 1000),
        "key_sha256": [hashlib.sha256(KEY.encode()).hexdigest()],
        "traffic": traffic,
        "deployments": {
            name: {
                "name": name,
                "instances": [{"id": f"{name}-0", "url": url}],
                "request_timeout_ms": 60000,
            }
            for name, url in deployments.items()
        },
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/routes/{ENDPOINT}",
        data=json.dumps(route).encode(),
        method="PUT",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result = json.loads(response.read())
    if not result["applied"]:
        raise RuntimeError(f"route not applied: {result}")


# --- azmlinfsrv ---

SCORE_PY = """
def init():
    pass


def run(raw_data):
    return {"ok": True}
"""


def start_azmlinfsrv(procs: Procs, work: Path, port: int) -> subprocess.Popen[bytes]:
    code = work / "azml"
    code.mkdir(exist_ok=True)
    (code / "score.py").write_text(SCORE_PY)
    exe = Path(sys.executable).with_name("azmlinfsrv")
    env = {**os.environ, "AZUREML_ENTRY_SCRIPT": "score.py"}
    proc = procs.start(
        [str(exe), "--entry_script", "score.py", "--port", str(port)],
        log=work / "azml.log",
        env=env,
        cwd=code,
    )
    wait_port(port, proc, limit_s=60)
    wait_http_ok(f"http://127.0.0.1:{port}/")
    return proc


# --- load ---


def check(port: int, headers: dict[str, str], expect_status: int = 200, cafile: str | None = None) -> str:
    """One request before a run, so a misconfigured row fails loudly rather than fast."""
    if cafile:
        context = ssl.create_default_context(cafile=cafile)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=10, context=context
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/score", body=BODY, headers=headers)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if response.status != expect_status:
        raise RuntimeError(f"port {port} answered {response.status}, expected {expect_status}")
    return response.headers.get("azureml-model-deployment") or ""


def run_wrk(url: str, headers: dict[str, str], duration: int, connections: int, work: Path) -> Result:
    script = work / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(BODY.decode())}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _wrk_latency(out, "50%")
    p99 = _wrk_latency(out, "99%")
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        found = re.search(pattern, out)
        if found:
            errors += int(found.group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+)", out)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return Result("", rps, p50, p99, errors)


def _wrk_latency(out: str, percentile: str) -> float:
    found = re.search(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not found:
        return float("nan")
    value, unit = float(found.group(1)), found.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


async def _python_load(host: str, port: int, request: bytes, duration: float, connections: int) -> Result:
    import httptools

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    class Done(Exception):
        pass

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        state = {"done": False, "status": 0}

        class Sink:
            def on_headers_complete(self) -> None:
                state["status"] = parser.get_status_code()

            def on_message_complete(self) -> None:
                state["done"] = True

        parser = httptools.HttpResponseParser(Sink())
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            state["done"] = False
            while not state["done"]:
                data = await reader.read(65536)
                if not data:
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    parser = httptools.HttpResponseParser(Sink())
                    break
                parser.feed_data(data)
            else:
                latencies.append(time.perf_counter() - started)
                if not 200 <= state["status"] < 400:
                    errors += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return Result("", n / elapsed, pct(0.5), pct(0.99), errors)


def run_python_load(url: str, headers: dict[str, str], duration: int, connections: int) -> Result:
    match = re.match(r"http://([^/:]+):(\d+)(/.*)", url)
    if not match:
        raise ValueError(f"the Python load generator speaks plain http only: {url}")
    host, port, path = match.group(1), int(match.group(2)), match.group(3)
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {headers.get('Host', host)}",
        f"Content-Length: {len(BODY)}",
        "Content-Type: application/json",
    ]
    head += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-type")]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + BODY
    import uvloop

    return uvloop.run(_python_load(host, port, request, duration, connections))


def measure(
    name: str, url: str, headers: dict[str, str], args: argparse.Namespace, work: Path, note: str = ""
) -> Result:
    print(f"running {name}: {url} ...", file=sys.stderr)
    time.sleep(0.5)
    if shutil.which("wrk") and not args.python_load:
        result = run_wrk(url, headers, args.duration, args.connections, work)
    else:
        if url.startswith("https://"):
            return Result(
                name,
                float("nan"),
                float("nan"),
                float("nan"),
                0,
                "skipped: the Python load generator has no TLS",
            )
        result = run_python_load(url, headers, args.duration, args.connections)
    result.name = name
    result.note = note
    return result


def print_table(results: list[Result], notes: list[str], args: argparse.Namespace) -> None:
    by_name = {r.name: r for r in results}
    direct = by_name.get("direct")
    nginx = by_name.get("nginx")
    azml_direct = by_name.get("azml-direct")
    load = "wrk -t1" if shutil.which("wrk") and not args.python_load else "python asyncio"
    print(
        f"\nload: {load} -c{args.connections} -d{args.duration}s, POST {len(BODY)} B body; "
        f"{os.cpu_count()} CPUs\n"
    )
    header = (
        f"{'row':<14} {'rps':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'/direct':>8} {'/nginx':>7}  note"
    )
    print(header)
    print("-" * len(header))
    order = ["direct", "nginx", "gateway", "gateway-quiet", "gateway-tls", "azml-direct", "azml-gateway"]
    for r in sorted(results, key=lambda r: order.index(r.name) if r.name in order else 99):
        base = azml_direct if r.name.startswith("azml") else direct
        to_direct = f"{r.rps / base.rps:.2f}" if base and base.rps == base.rps else "-"
        to_nginx = "-"
        if nginx and not r.name.startswith("azml") and nginx.rps == nginx.rps:
            to_nginx = f"{r.rps / nginx.rps:.2f}"
        print(
            f"{r.name:<14} {r.rps:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7} "
            f"{to_direct:>8} {to_nginx:>7}  {r.note}"
        )
    for note in notes:
        print(f"note: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-azml", action="store_true", help="skip the azmlinfsrv rows")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument(
        "--python-load", action="store_true", help="use the Python load generator even if wrk is here"
    )
    args = parser.parse_args()

    notes = ensure_tools()
    load_before = os.getloadavg()[0]
    nginx = _which("nginx")
    work = Path(tempfile.mkdtemp(prefix="tidegate-bench-"))
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        (work / sub).mkdir()
    port_a, port_b, ngw, https, http, admin, azml = free_ports(7)
    procs = Procs()
    results: list[Result] = []
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    try:
        kind = start_backends(procs, work, port_a, port_b, nginx)
        notes.append(f"trivial backend: {kind}")
        results.append(
            measure(
                "direct", f"http://127.0.0.1:{port_a}/score", {"Content-Type": "application/json"}, args, work
            )
        )

        gateway = start_gateway(procs, work, {"https": https, "http": http, "admin": admin})
        push_route(
            admin,
            {"blue": f"http://127.0.0.1:{port_a}", "green": f"http://127.0.0.1:{port_b}"},
            {"blue": 90, "green": 10},
        )
        host = {"Host": f"{ENDPOINT}.localhost:{http}"}
        check(http, {**auth, **host})
        check(http, {**host}, expect_status=401)
        results.append(
            measure(
                "gateway",
                f"http://127.0.0.1:{http}/score",
                {**auth, **host},
                args,
                work,
                "key auth + 90/10 split; access log to file+stderr",
            )
        )
        cafile = str(work / "home" / "tls" / "ca.pem")
        try:
            check(https, {**auth, **host}, cafile=cafile)
            results.append(
                measure(
                    "gateway-tls",
                    f"https://127.0.0.1:{https}/score",
                    {**auth, **host},
                    args,
                    work,
                    "same, HTTPS",
                )
            )
        except (OSError, RuntimeError) as exc:
            notes.append(f"gateway-tls skipped: {exc}")

        if nginx:
            start_nginx_gateway(procs, work, nginx, ngw, port_a, port_b)
            check(ngw, dict(auth))
            check(ngw, {}, expect_status=401)
            results.append(
                measure(
                    "nginx",
                    f"http://127.0.0.1:{ngw}/score",
                    auth,
                    args,
                    work,
                    "map key check + split_clients 90/10, 1 worker",
                )
            )

        # Same home: the restarted gateway serves from its persisted route table.
        procs.stop(gateway)
        gateway = start_gateway(
            procs, work, {"https": https, "http": http, "admin": admin}, TIDEGATE_LOG_LEVEL="warning"
        )
        check(http, {**auth, **host})
        results.append(
            measure(
                "gateway-quiet",
                f"http://127.0.0.1:{http}/score",
                {**auth, **host},
                args,
                work,
                "same, log level warning: access log to file only",
            )
        )

        if not args.no_azml:
            azml_proc = start_azmlinfsrv(procs, work, azml)
            results.append(
                measure(
                    "azml-direct",
                    f"http://127.0.0.1:{azml}/score",
                    {"Content-Type": "application/json"},
                    args,
                    work,
                    "azmlinfsrv, trivial score.py",
                )
            )
            push_route(admin, {"blue": f"http://127.0.0.1:{azml}"}, {"blue": 100})
            check(http, {**auth, **host})
            results.append(
                measure(
                    "azml-gateway",
                    f"http://127.0.0.1:{http}/score",
                    {**auth, **host},
                    args,
                    work,
                    "through the gateway",
                )
            )
            procs.stop(azml_proc)
        procs.stop(gateway)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            notes.append(f"work dir kept: {work}")
    notes.append(
        f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after: "
        "other work on this machine skews the figures"
    )
    print_table(results, notes, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
