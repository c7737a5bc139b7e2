"""Gateway benchmark: prints rps, p50 and p99 for the gateway against direct and nginx,
the cost of each gateway feature, rps per process count, and the gateway's memory.

Rows:
  direct          a trivial backend, no proxy
  nginx           nginx doing the same key check (map) and 90/10 split (split_clients)
  gateway         Tidegate's gateway as `tidegate up` starts it (the shipped defaults):
                  every feature on: key auth, 90/10 split, least outstanding choice,
                  limits (64 per instance: checked, never binding), windows, access log to
                  its file and not echoed, process log at INFO, 1 process
  gateway-tls     the same over HTTPS
  gw-echo         the same, access lines also echoed to stderr (TIDEGATE_GATEWAY_ACCESS_LOG_ECHO)
  gw-no-limits    gateway with the limits off (TIDEGATE_GATEWAY_DISABLE=limits)
  gw-no-windows   ... windows off
  gw-no-accesslog ... access log off
  gw-bare         ... limits, windows, access log and mirroring all off
  gw-mirror10     every feature on and 10 % of requests mirrored to a shadow deployment
  gw-traced       every feature on and a span per request exported over OTLP/HTTP
                  (TIDEGATE_OTLP_ENDPOINT) to a sink that decodes them; `gateway` is the same
                  with tracing off, which must cost nothing (run them side by side:
                  --rows gateway,gw-traced; --baseline prices "off" against the code before)
  gw-traced10     the same with 1 request in 10 sampled (OTEL_TRACES_SAMPLER)
  gw-2proc        every feature on, TIDEGATE_GATEWAY_WORKERS=2 (SO_REUSEPORT)
  azml-direct     azmlinfsrv serving a trivial score.py
  azml-gateway    the same through the gateway

Memory: the gateway's RSS idle, with 10,000 open idle keep-alive connections, and under
overload (a backend of 8 slots x 10 ms, far more offered than it serves: 429s).

Every gateway here is started as ``tidegate up`` starts it (``python -m control.cli gateway``,
the shipped defaults), with no ``TIDEGATE_*`` setting inherited from the shell: a row changes
only what its description says.

Load: ``wrk -t1 -c32 -d10s`` when wrk is on PATH, else a Python asyncio load generator.
The trivial backend is nginx ``return 200`` when nginx is on PATH, else a small uvloop
server. Every server here listens on 127.0.0.1 only. Figures are printed, never asserted.
``--rounds N`` runs the gateway rows N times, interleaved, and prints each row's median:
other work on the machine moves single runs by more than some features cost.
``--baseline DIR`` prices a change to the gateway: DIR holds another ``gateway`` package (e.g.
a copy of ``gateway/`` taken before the change, as DIR/gateway); every gateway row also runs
from it, as ROW@base, right after or before this tree's (the order alternating by round), so
the two see the same machine.

    .venv/bin/python bench/gateway.py [--duration 10] [--connections 32] [--rounds 1]
                                      [--rows gateway,...] [--baseline DIR]
                                      [--no-azml] [--no-memory]
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
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config.tokens import SigningKey, issue_token  # noqa: E402
from tests.support.ports import free_ports  # noqa: E402

KEY = "bench-key-0123456789abcdef"
CONTROL_TOKEN = "bench-control-credential-0123456789"  # the gateways' admin API wants it
BODY = b'{"data": [[1.0, 2.0, 3.0, 4.0]]}'
ENDPOINT = "bench-ep"
SIGNING = SigningKey.generate(version=1)  # the gw-token row's endpoint signs with this
RESPONSE_BODY = b'{"ok": true}'


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    note: str = ""
    non_2xx: int = 0
    total: int = 0
    cpu_us: float = float("nan")  # the proxy's CPU time (all its processes) per request


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
    import asyncio, os, sys, uvloop, httptools
    BODY = %r
    DELAY = float(os.environ.get("BENCH_DELAY_MS", "0")) / 1000
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
            if DELAY:
                asyncio.get_running_loop().call_later(DELAY, self.answer, self.p.should_keep_alive())
            else:
                self.answer(self.p.should_keep_alive())
        def answer(self, keep):
            if self.t.is_closing():
                return
            self.t.write(RESP)
            if not keep:
                self.t.close()
    async def main():
        loop = asyncio.get_running_loop()
        for port in sys.argv[1:]:
            await loop.create_server(P, "127.0.0.1", int(port), backlog=2048)
        await asyncio.Event().wait()
    uvloop.run(main())
    """
) % (RESPONSE_BODY,)


def start_slow_backend(
    procs: Procs, work: Path, ports: list[int], delay_ms: float
) -> subprocess.Popen[bytes]:
    """The uvloop backend answering each request ``delay_ms`` late (concurrency unbounded)."""
    script = work / "backend.py"
    script.write_text(UVLOOP_BACKEND)
    env = {**os.environ, "BENCH_DELAY_MS": str(delay_ms)}
    proc = procs.start([sys.executable, str(script), *map(str, ports)], log=work / "slow.out", env=env)
    for port in ports:
        wait_port(port, proc)
    return proc


OTLP_SINK = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest, ExportTraceServiceResponse)
    bodies = []
    OK = ExportTraceServiceResponse().SerializeToString()
    async def traces(request):
        bodies.append(await request.read())  # decoded when asked: off the measured run
        return web.Response(body=OK, content_type="application/x-protobuf")
    async def count(_):
        spans = 0
        for body in bodies:
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                for ss in rs.scope_spans:
                    spans += len(ss.spans)
        return web.json_response({"spans": spans, "exports": len(bodies)})
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


def start_otlp_sink(procs: Procs, work: Path, port: int) -> subprocess.Popen[bytes]:
    """An OTLP/HTTP trace receiver (its own process) that keeps what it gets; ``/count``
    decodes it and says how many spans arrived."""
    script = work / "otlp_sink.py"
    script.write_text(OTLP_SINK)
    proc = procs.start([sys.executable, str(script), str(port)], log=work / "otlp_sink.out")
    wait_port(port, proc)
    return proc


def otlp_sink_count(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=60) as response:
        return dict(json.load(response))


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


def gateway_command(code: Path | None) -> tuple[list[str], str]:
    """``tidegate up``'s command for the gateway and the PYTHONPATH it runs with; with
    ``code``, the ``gateway`` package comes from there (``-P``: the working directory, this
    tree, would come first otherwise)."""
    if code is None:
        return [sys.executable, "-m", "control.cli", "gateway"], str(REPO)
    return [sys.executable, "-P", "-m", "control.cli", "gateway"], f"{code}{os.pathsep}{REPO}"


def check_baseline(code: Path) -> str:
    """Where a gateway started with ``code`` imports ``gateway`` from; refuses a DIR without one."""
    command, pythonpath = gateway_command(code)
    found = subprocess.run(
        [command[0], "-P", "-c", "import gateway; print(gateway.__file__)"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"--baseline {code}: no gateway package there (gateway imports from {found})")
    return found


def start_gateway(
    procs: Procs, work: Path, ports: dict[str, int], code: Path | None = None, **extra_env: str
) -> subprocess.Popen[bytes]:
    """The gateway as ``tidegate up`` starts it (``control.stack``: ``python -m control.cli
    gateway``, the caller's environment plus TIDEGATE_HOME), on the bench's own ports and
    home. Inherited TIDEGATE_* and OTEL_* settings are dropped so that a shell's (an echoed access log, a
    feature turned off) cannot change a row; ``extra_env`` is the row's own. ``code``: a
    directory with another ``gateway`` package to run instead (``--baseline``)."""
    command, pythonpath = gateway_command(code)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("TIDEGATE_", "OTEL_"))}
    env = {
        **inherited,
        **extra_env,
        "TIDEGATE_HOME": str(work / "home"),
        "TIDEGATE_GATEWAY_HTTPS_PORT": str(ports["https"]),
        "TIDEGATE_GATEWAY_HTTP_PORT": str(ports["http"]),
        "TIDEGATE_GATEWAY_ADMIN_PORT": str(ports["admin"]),
        "TIDEGATE_CONTROL_TOKEN": CONTROL_TOKEN,
        "PYTHONPATH": pythonpath,
    }
    with open(work / "gateway.log", "ab") as log:  # access lines echo here: keep it small
        log.truncate(0)
    proc = procs.start(command, log=work / "gateway.log", env=env, cwd=REPO)
    wait_port(ports["admin"], proc)
    wait_http_ok(f"http://127.0.0.1:{ports['admin']}/healthz")
    return proc


def push_route(
    admin_port: int,
    deployments: dict[str, str | list[str]],
    traffic: dict[str, int],
    *,
    max_concurrent: int = 64,
    max_queue_wait_ms: int = 500,
    mirror: dict[str, int] | None = None,
    token_auth: bool = False,
) -> None:
    """The bench endpoint; limits roomy by default so the rows price checking them, not
    queueing (Azure's default of 1 per instance would make every row a queueing test)."""
    route = {
        "name": ENDPOINT,
        "generation": time.time_ns() // 1_000_000,  # epoch ms, as the endpoint workflow pushes
        "key_sha256": [hashlib.sha256(KEY.encode()).hexdigest()],
        "auth_mode": "aml_token" if token_auth else "key",
        "token_public_keys": [SIGNING.public] if token_auth else [],
        "traffic": traffic,
        "mirror_traffic": mirror or {},
        "deployments": {
            name: {
                "name": name,
                "instances": [
                    {"id": f"{name}-{i}", "url": url}
                    for i, url in enumerate([urls] if isinstance(urls, str) else urls)
                ],
                "request_timeout_ms": 60000,
                "max_concurrent_requests_per_instance": max_concurrent,
                "max_queue_wait_ms": max_queue_wait_ms,
            }
            for name, urls in deployments.items()
        },
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/routes/{ENDPOINT}",
        data=json.dumps(route).encode(),
        method="PUT",
        headers={"content-type": "application/json", "authorization": f"Bearer {CONTROL_TOKEN}"},
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


def run_wrk(
    url: str, headers: dict[str, str], duration: float, connections: int, work: Path, delay_ms: int = 0
) -> Result:
    """wrk, closed loop; ``delay_ms`` paces each connection (one request per delay + latency)."""
    script = work / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(BODY.decode())}"]
    if delay_ms:
        lines.append(f"function delay() return {delay_ms} end")
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx_found = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    non_2xx = int(non_2xx_found.group(1)) if non_2xx_found else 0
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
    return Result("", rps, p50, p99, errors, non_2xx=non_2xx, total=total)


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
    name: str,
    url: str,
    headers: dict[str, str],
    args: argparse.Namespace,
    work: Path,
    note: str = "",
    pid: int | None = None,
) -> Result:
    """One row; with ``pid``, also that process tree's CPU time per request (steadier than
    rps when other work shares the machine)."""
    print(f"running {name}: {url} ...", file=sys.stderr)
    time.sleep(0.5)
    if shutil.which("wrk") and not args.python_load:
        cpu_before = cpu_seconds(pid) if pid else 0.0
        result = run_wrk(url, headers, args.duration, args.connections, work)
        if pid and result.total:
            result.cpu_us = (cpu_seconds(pid) - cpu_before) / result.total * 1e6
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
        f"{os.cpu_count()} CPUs; gateway rows: median of {args.rounds} round(s)\n"
    )
    header = (
        f"{'row':<16} {'rps':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'/direct':>8} {'/nginx':>7} {'cpu us/req':>10}  note"
    )
    print(header)
    print("-" * len(header))
    for r in sorted(results, key=_row_order):
        base = azml_direct if r.name.startswith("azml") else direct
        to_direct = f"{r.rps / base.rps:.2f}" if base and base.rps == base.rps else "-"
        to_nginx = "-"
        if nginx and not r.name.startswith("azml") and nginx.rps == nginx.rps:
            to_nginx = f"{r.rps / nginx.rps:.2f}"
        print(
            f"{r.name:<16} {r.rps:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7} "
            f"{to_direct:>8} {to_nginx:>7} {r.cpu_us:>10.1f}  {r.note}"
        )
    gateway = by_name.get("gateway")
    if nginx and gateway:
        print(
            f"\ngoal (issue 4): gateway >= 90 % of nginx's rps and p99 <= nginx p99 + 0.5 ms: "
            f"{100 * gateway.rps / nginx.rps:.0f} % of nginx, p99 {gateway.p99_ms:.2f} ms vs "
            f"{nginx.p99_ms + 0.5:.2f} ms"
        )
    print_baseline(by_name)
    print_feature_costs(by_name)
    print_processes(by_name)
    for note in notes:
        print(f"note: {note}")


def _row_order(r: Result) -> float:
    name, based, _ = r.name.partition(BASE_SUFFIX)
    return (ROW_ORDER.index(name) if name in ROW_ORDER else 99) + (0.5 if based else 0.0)


def print_baseline(by_name: dict[str, Result]) -> None:
    """This tree's gateway against the --baseline one, row by row."""
    pairs = [(r, by_name.get(r.name + BASE_SUFFIX)) for r in by_name.values()]
    pairs = [(r, base) for r, base in pairs if base is not None]
    if not pairs:
        return
    print("\nthis tree vs --baseline (ROW vs ROW@base, alternated row by row)")
    header = (
        f"{'row':<16} {'rps':>9} {'rps base':>9} {'ratio':>6} {'cpu us/req':>11} {'base':>6} {'change':>7}"
    )
    print(header)
    print("-" * len(header))
    for r, base in sorted(pairs, key=lambda pair: _row_order(pair[0])):
        print(
            f"{r.name:<16} {r.rps:>9.0f} {base.rps:>9.0f} {r.rps / base.rps:>6.3f} {r.cpu_us:>11.1f} "
            f"{base.cpu_us:>6.1f} {r.cpu_us - base.cpu_us:>+7.1f}"
        )


def print_feature_costs(by_name: dict[str, Result]) -> None:
    on = by_name.get("gateway")
    if on is None:
        return
    print("\nfeature cost: gateway with the feature off vs every feature on")
    header = (
        f"{'feature':<22} {'rps off':>9} {'rps on':>9} {'rps lost':>9} {'us/req (rps)':>13} "
        f"{'cpu us/req off':>15} {'on':>6} {'cost':>6}"
    )
    print(header)
    print("  us/req (rps) = 1/rps_on - 1/rps_off; cpu = the gateway's own CPU time per request")
    print("-" * len(header))
    for feature, row, feature_on in (
        ("limits", "gw-no-limits", on),
        ("windows", "gw-no-windows", on),
        ("access log (file)", "gw-no-accesslog", on),
        ("all three", "gw-bare", on),
        ("access log to stderr", "gateway", by_name.get("gw-echo")),
        ("mirror 10 %", "gateway", by_name.get("gw-mirror10")),
        ("tracing (OTLP export)", "gateway", by_name.get("gw-traced")),
        ("tracing, 10 % sampled", "gateway", by_name.get("gw-traced10")),
    ):
        off = by_name.get(row)
        if off is None or feature_on is None:
            continue
        lost = 100 * (1 - feature_on.rps / off.rps)
        cost_us = (1 / feature_on.rps - 1 / off.rps) * 1e6
        cpu_cost = feature_on.cpu_us - off.cpu_us
        print(
            f"{feature:<22} {off.rps:>9.0f} {feature_on.rps:>9.0f} {lost:>8.1f}% {cost_us:>13.2f} "
            f"{off.cpu_us:>15.1f} {feature_on.cpu_us:>6.1f} {cpu_cost:>6.1f}"
        )


def print_processes(by_name: dict[str, Result]) -> None:
    rows = [(1, by_name.get("gateway")), (2, by_name.get("gw-2proc"))]
    if rows[1][1] is None:
        return
    print("\nprocesses (TIDEGATE_GATEWAY_WORKERS), every feature on")
    header = f"{'processes':>9} {'rps':>10} {'p50 ms':>8} {'p99 ms':>8} {'x 1 process':>12}"
    print(header)
    print("-" * len(header))
    one = rows[0][1]
    for count, r in rows:
        if r is None:
            continue
        ratio = f"{r.rps / one.rps:.2f}" if one else "-"
        print(f"{count:>9} {r.rps:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {ratio:>12}")


ROW_ORDER = [
    "direct",
    "nginx",
    "gateway",
    "gateway-tls",
    "gw-echo",
    "gw-no-limits",
    "gw-no-windows",
    "gw-no-accesslog",
    "gw-bare",
    "gw-mirror10",
    "gw-traced",
    "gw-traced10",
    "gw-2proc",
    "azml-direct",
    "azml-gateway",
]

BASE_SUFFIX = "@base"  # a row run from the --baseline gateway package

# Gateway rows: (name, extra environment, mirror share, note)
GATEWAY_ROWS: list[tuple[str, dict[str, str], int, str]] = [
    ("gateway", {}, 0, "as `tidegate up` starts it: every feature on, access log to its file, no echo"),
    ("gw-echo", {"TIDEGATE_GATEWAY_ACCESS_LOG_ECHO": "true"}, 0, "same + access lines echoed to stderr"),
    ("gw-no-limits", {"TIDEGATE_GATEWAY_DISABLE": "limits"}, 0, "limits off"),
    ("gw-no-windows", {"TIDEGATE_GATEWAY_DISABLE": "windows"}, 0, "windows off"),
    ("gw-no-accesslog", {"TIDEGATE_GATEWAY_DISABLE": "accesslog"}, 0, "access log off"),
    ("gw-bare", {"TIDEGATE_GATEWAY_DISABLE": "limits,windows,accesslog,mirror"}, 0, "all of them off"),
    ("gw-mirror10", {}, 10, "every feature on + 10 % mirrored to a shadow"),
    # The endpoint is the bench's OTLP sink (its port is known once it runs).
    ("gw-traced", {"TIDEGATE_OTLP_ENDPOINT": "{otlp}"}, 0, "every feature on + a span per request, OTLP"),
    (
        "gw-traced10",
        {
            "TIDEGATE_OTLP_ENDPOINT": "{otlp}",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        },
        0,
        "same, 1 request in 10 sampled (OTEL_TRACES_SAMPLER)",
    ),
    ("gw-2proc", {"TIDEGATE_GATEWAY_WORKERS": "2"}, 0, "every feature on, 2 processes"),
    ("gw-token", {}, 0, "every feature on, aml_token auth: a signed token instead of a key"),
]


def median_result(name: str, runs: list[Result]) -> Result:
    ordered = sorted(runs, key=lambda r: r.rps)
    middle = ordered[len(ordered) // 2]
    note = middle.note
    if len(runs) > 1:
        note += f" [rps of {len(runs)} runs: {', '.join(f'{r.rps:.0f}' for r in runs)}]"
    cpu = [r.cpu_us for r in runs if r.cpu_us == r.cpu_us]
    if len(runs) > 1 and cpu:
        note += f" [cpu us/req: {', '.join(f'{c:.1f}' for c in cpu)}]"
    median_cpu = statistics.median(cpu) if cpu else float("nan")
    return Result(name, middle.rps, middle.p50_ms, middle.p99_ms, middle.errors, note, cpu_us=median_cpu)


# --- memory ---


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gateway processes 1..N-1, nginx workers)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def rss_kb(pid: int) -> int:
    """Resident set of ``pid`` and its descendants, in KiB."""
    total = 0
    for current in process_tree(pid):
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants (all threads)."""
    total = 0.0
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


async def _hold_idle(
    port: int, count: int, request: bytes, ready: threading.Event, release: threading.Event
) -> int:
    """Open ``count`` connections, one request on each, then keep them open and idle."""
    writers: list[asyncio.StreamWriter] = []
    failed = 0
    limit = asyncio.Semaphore(256)

    async def one() -> None:
        nonlocal failed
        async with limit:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                writers.append(writer)
            except (OSError, asyncio.IncompleteReadError, AttributeError):
                failed += 1

    await asyncio.gather(*(one() for _ in range(count)))
    ready.set()
    await asyncio.to_thread(release.wait)
    for writer in writers:
        writer.close()
    return failed


def measure_idle_connections(
    gateway: subprocess.Popen[bytes], port: int, headers: dict[str, str], count: int
) -> dict[str, float]:
    head = ["POST /score HTTP/1.1", f"Content-Length: {len(BODY)}"] + [
        f"{k}: {v}" for k, v in headers.items()
    ]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + BODY
    before = rss_kb(gateway.pid)
    ready, release = threading.Event(), threading.Event()
    outcome: dict[str, int] = {}

    def run() -> None:
        import uvloop

        outcome["failed"] = uvloop.run(_hold_idle(port, count, request, ready, release))

    holder = threading.Thread(target=run, daemon=True)
    holder.start()
    ready.wait(120)
    time.sleep(1.0)
    held = rss_kb(gateway.pid)
    release.set()
    holder.join(60)
    time.sleep(1.0)
    after = rss_kb(gateway.pid)
    return {
        "before_kb": before,
        "held_kb": held,
        "after_kb": after,
        "failed": outcome.get("failed", count),
        "per_conn_kb": (held - before) / max(1, count - outcome.get("failed", 0)),
    }


def measure_overload(
    procs: Procs,
    work: Path,
    gateway: subprocess.Popen[bytes],
    ports: dict[str, int],
    slow_ports: list[int],
    args: argparse.Namespace,
) -> dict[str, float]:
    """8 slots (2 instances x 4) of a 10 ms backend (capacity ~800 rps), overloaded: 1500
    connections each sending one request per 100 ms (wrk's delay()). The queue (512) fills
    and its requests wait up to 100 ms, which bounds what wrk offers (about 7x measured);
    the rest is refused at once."""
    slow = start_slow_backend(procs, work, slow_ports, delay_ms=10)
    push_route(
        ports["admin"],
        {"blue": [f"http://127.0.0.1:{p}" for p in slow_ports]},
        {"blue": 100},
        max_concurrent=4,
        max_queue_wait_ms=100,
    )
    host = {"Host": f"{ENDPOINT}.localhost:{ports['http']}", "Authorization": f"Bearer {KEY}"}
    check(ports["http"], {**host, "Content-Type": "application/json"})
    before = rss_kb(gateway.pid)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append(rss_kb(gateway.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = run_wrk(
        f"http://127.0.0.1:{ports['http']}/score", host, args.duration * 2, 1000, work, delay_ms=100
    )
    stop.set()
    sampler.join()
    time.sleep(1.0)
    after = rss_kb(gateway.pid)
    alive = gateway.poll() is None
    try:
        check(ports["http"], {**host, "Content-Type": "application/json"})
        serving = True
    except (OSError, RuntimeError):
        serving = False
    procs.stop(slow)
    served = result.total - result.non_2xx
    seconds = args.duration * 2
    half = len(samples) // 2
    return {
        "offered_rps": result.rps,
        "served_rps": served / seconds,
        "capacity_rps": 8 / 0.010,
        "non_2xx_share": result.non_2xx / max(1, result.total),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "before_kb": before,
        "peak_kb": max(samples, default=before),
        "first_half_peak_kb": max(samples[:half], default=before),
        "second_half_peak_kb": max(samples[half:], default=before),
        "after_kb": after,
        "alive": float(alive and serving),
    }


def print_memory(idle: dict[str, float] | None, overload: dict[str, float] | None, count: int) -> None:
    if idle is None and overload is None:
        return
    print("\nmemory (RSS of the gateway, 1 process, every feature on)")
    if idle is not None:
        print(
            f"  {count} idle keep-alive connections (one request each, then held): "
            f"{idle['before_kb'] / 1024:.1f} MiB before, {idle['held_kb'] / 1024:.1f} MiB held "
            f"({idle['per_conn_kb']:.1f} KiB per connection), "
            f"{idle['after_kb'] / 1024:.1f} MiB after closing; "
            f"{int(idle['failed'])} failed to open"
        )
    if overload is not None:
        times = overload["offered_rps"] / overload["capacity_rps"]
        print(
            f"  overload: offered {overload['offered_rps']:.0f} rps = {times:.0f}x a capacity of "
            f"{overload['capacity_rps']:.0f} rps (8 slots x 10 ms; wrk -c1500, 100 ms between requests); "
            f"served {overload['served_rps']:.0f} rps, "
            f"{100 * overload['non_2xx_share']:.1f} % answered 429; p50 {overload['p50_ms']:.2f} ms, "
            f"p99 {overload['p99_ms']:.2f} ms"
        )
        print(
            f"  overload RSS: {overload['before_kb'] / 1024:.1f} MiB before, peak "
            f"{overload['first_half_peak_kb'] / 1024:.1f} MiB in the first half and "
            f"{overload['second_half_peak_kb'] / 1024:.1f} MiB in the second (bounded: flat), "
            f"{overload['after_kb'] / 1024:.1f} MiB after; "
            f"{'alive and serving after' if overload['alive'] else 'NOT serving after'}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each gateway row (median printed)")
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--no-azml", action="store_true", help="skip the azmlinfsrv rows")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--rows", help="only these gateway rows (comma-separated names)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a directory holding another gateway package: each gateway row also runs from it (ROW@base)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument(
        "--python-load", action="store_true", help="use the Python load generator even if wrk is here"
    )
    args = parser.parse_args()

    notes = ensure_tools()
    if args.baseline is not None:
        notes.append(f"ROW@base rows: the gateway package at {check_baseline(args.baseline)}")
    load_before = os.getloadavg()[0]
    nginx = _which("nginx")
    work = Path(tempfile.mkdtemp(prefix="tidegate-bench-"))
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        (work / sub).mkdir()
    port_a, port_b, ngw, https, http, admin, azml, slow_a, slow_b, otlp = free_ports(10)
    ports = {"https": https, "http": http, "admin": admin}
    procs = Procs()
    results: list[Result] = []
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    token = issue_token(SIGNING, ENDPOINT, now=time.time(), lifetime_seconds=24 * 3600).access_token
    host = {"Host": f"{ENDPOINT}.localhost:{http}"}
    split = {"blue": f"http://127.0.0.1:{port_a}", "green": f"http://127.0.0.1:{port_b}"}
    wanted = set(args.rows.split(",")) if args.rows else None
    idle: dict[str, float] | None = None
    overload: dict[str, float] | None = None
    try:
        kind = start_backends(procs, work, port_a, port_b, nginx)
        notes.append(f"trivial backend: {kind}")
        results.append(
            measure(
                "direct", f"http://127.0.0.1:{port_a}/score", {"Content-Type": "application/json"}, args, work
            )
        )
        if nginx:
            nginx_gateway = start_nginx_gateway(procs, work, nginx, ngw, port_a, port_b)
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
                    pid=nginx_gateway.pid,
                )
            )
            procs.stop(nginx_gateway)  # idle from here on, but off the machine

        runs: dict[str, list[Result]] = {}
        variants: list[tuple[str, Path | None]] = [("", None)]
        if args.baseline is not None:
            variants.append((BASE_SUFFIX, args.baseline))
        sink: subprocess.Popen[bytes] | None = None
        for round_index in range(args.rounds):
            for name, env, mirror, note in GATEWAY_ROWS:
                if wanted is not None and name not in wanted:
                    continue
                traced_row = name.startswith("gw-traced")
                if traced_row:
                    if sink is None:
                        sink = start_otlp_sink(procs, work, otlp)
                    env = {k: v.format(otlp=f"http://127.0.0.1:{otlp}") for k, v in env.items()}
                # With --baseline, the two gateways take turns going first, round by round.
                for suffix, code in variants if round_index % 2 == 0 else variants[::-1]:
                    token_row = name == "gw-token"
                    if token_row and code is not None:
                        continue  # a baseline from before token auth has no such row
                    if traced_row and code is not None:
                        continue  # nor one from before tracing
                    credential = {**auth, "Authorization": f"Bearer {token}"} if token_row else auth
                    gateway = start_gateway(procs, work, ports, code, **env)
                    deployments: dict[str, str | list[str]] = dict(split)
                    if mirror:
                        deployments["shadow"] = f"http://127.0.0.1:{port_b}"
                    push_route(
                        admin,
                        deployments,
                        {"blue": 90, "green": 10},
                        mirror={"shadow": mirror} if mirror else None,
                        token_auth=token_row,
                    )
                    check(http, {**credential, **host})
                    check(http, {**host}, expect_status=401)
                    if token_row:
                        check(http, {**auth, **host}, expect_status=401)  # a key opens nothing
                    if name == "gw-2proc":
                        time.sleep(1.0)  # the second process follows the pushed table
                    runs.setdefault(name + suffix, []).append(
                        measure(
                            name + suffix,
                            f"http://127.0.0.1:{http}/score",
                            {**credential, **host},
                            args,
                            work,
                            note,
                            gateway.pid,
                        )
                    )
                    if name == "gateway":
                        cafile = str(work / "home" / "tls" / "ca.pem")
                        try:
                            check(https, {**auth, **host}, cafile=cafile)
                            runs.setdefault("gateway-tls" + suffix, []).append(
                                measure(
                                    "gateway-tls" + suffix,
                                    f"https://127.0.0.1:{https}/score",
                                    {**auth, **host},
                                    args,
                                    work,
                                    "same, HTTPS",
                                    gateway.pid,
                                )
                            )
                        except (OSError, RuntimeError) as exc:
                            notes.append(f"gateway-tls{suffix} skipped: {exc}")
                    procs.stop(gateway)  # with tracing on, the spans still queued go out
                    if traced_row:
                        served = runs[name + suffix][-1].total
                        got = otlp_sink_count(otlp)
                        notes.append(
                            f"{name}{suffix} round {round_index + 1}: the OTLP sink has {got['spans']} "
                            f"spans in {got['exports']} exports so far ({served} requests this round)"
                        )
        if sink is not None:
            procs.stop(sink)
        results.extend(median_result(name, found) for name, found in runs.items())

        if not args.no_memory:
            gateway = start_gateway(
                procs,
                work,
                ports,
                # Room for the held connections and the checks beside them.
                TIDEGATE_GATEWAY_MAX_CONNECTIONS=str(args.idle_connections + 1024),
            )
            push_route(admin, split, {"blue": 90, "green": 10})
            check(http, {**auth, **host})
            print(f"holding {args.idle_connections} idle connections ...", file=sys.stderr)
            idle = measure_idle_connections(gateway, http, {**auth, **host}, args.idle_connections)
            print("overload ...", file=sys.stderr)
            overload = measure_overload(procs, work, gateway, ports, [slow_a, slow_b], args)
            procs.stop(gateway)

        if not args.no_azml:
            gateway = start_gateway(procs, work, ports)
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
    print_memory(idle, overload, args.idle_connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
