"""`tidegate`: Azure ML CLI v2's online-endpoint / online-deployment verbs, plus the local stack."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from config.contract.errors import TidegateError
from config.contract.names import RolloutSignal
from config.settings import Settings, load_settings
from config.telemetry import shutdown_tracing
from decisions.availability import SLO_TAG

err_console = Console(stderr=True)

GROUP_HELP = (
    "Accepted so scripts written for `az ml` run unchanged; Tidegate has one local "
    "workspace, so the value is ignored."
)


def fail(message: str) -> None:
    for line in message.splitlines() or [message]:
        click.echo(f"ERROR: {line}", err=True)
    _exit(1)


def _exit(code: int) -> None:
    """Leave without interpreter teardown: the Temporal client's Rust threads can abort a
    finalizing interpreter (temporalio/sdk-python#300) and turn a success into exit code 134.
    The spans still queued (TIDEGATE_OTLP_ENDPOINT) go out first: os._exit skips atexit."""
    shutdown_tracing()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_async(coro_fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Run an async command; domain errors become one `ERROR:` line and exit code 1."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from config.security import ControlAccessError
        from config.yaml_loader import SpecError  # spec errors already name file, line and field
        from decisions.traffic import TrafficError

        try:
            asyncio.run(coro_fn(*args, **kwargs))
        except (TidegateError, SpecError, TrafficError, ControlAccessError) as err:
            fail(str(err))
        except KeyboardInterrupt:
            fail("interrupted")
        _exit(0)

    return wrapper


def azure_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-g/-w (accepted for az ml scripts), --output and --query on every resource command."""
    fn = click.option("--query", default=None, help="JMESPath query applied to the result.")(fn)
    fn = click.option(
        "-o",
        "--output",
        type=click.Choice(["json", "tsv", "table", "yaml"]),
        default="json",
        show_default=True,
    )(fn)
    fn = click.option("-w", "--workspace-name", default=None, help=GROUP_HELP)(fn)
    fn = click.option("-g", "--resource-group", default=None, help=GROUP_HELP)(fn)
    return fn


def emit(data: Any, output: str, query: str | None) -> None:
    from control.output import render

    click.echo(render(data, output=output, query=query))


API_OPTION = "--api"


def _api_url(*, flag_only: bool = False) -> str | None:
    """`--api URL`, else the TIDEGATE_API_URL setting; None: straight to Temporal."""
    ctx = click.get_current_context(silent=True)
    given = ctx.find_root().params.get("api") if ctx is not None else None
    return given if flag_only else given or load_settings().api_url


async def facade():
    """The client façade: over the REST API with `--api`, else over Temporal. Both answer the
    same calls, so a command reads the same either way."""
    settings = load_settings()
    url = _api_url()
    if url:
        from control.arm.client import RestTidegate

        return await RestTidegate.connect(settings, url)
    from control.facade import Tidegate

    return await Tidegate.connect(settings)


def refuse_over_api(*, flag_only: bool = False) -> None:
    """With `--api` (or TIDEGATE_API_URL), a command the REST API cannot serve says so (exit
    code 2) instead of reaching past the API to Temporal or the local state dir. `flag_only`:
    the local system's own commands (`up`, `worker`...) heed only the flag, so a setting meant
    for the CLI, inherited by the processes `up` starts, does not stop them."""
    url = _api_url(flag_only=flag_only)
    if not url:
        return
    ctx = click.get_current_context()
    names, at = [], ctx
    while at.parent is not None:  # the root's name is however the CLI was started
        names.append(at.info_name or "")
        at = at.parent
    raise click.UsageError(
        f"`tidegate {' '.join(reversed(names))}` is not served by the REST API; run it without "
        f"{API_OPTION} (and TIDEGATE_API_URL) on the machine that runs Tidegate (the API is {url})",
        ctx=ctx,
    )


def direct_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command only the direct path serves (see `refuse_over_api`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        refuse_over_api()
        return fn(*args, **kwargs)

    return wrapper


def local_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One of the local system's commands: refused with the `--api` flag only."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        refuse_over_api(flag_only=True)
        return fn(*args, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    API_OPTION,
    "api",
    metavar="URL",
    default=None,
    help="Go through Tidegate's REST API at URL instead of straight to Temporal "
    "(default: TIDEGATE_API_URL). Code and model paths are read on the API's machine.",
)
def main(api: str | None) -> None:
    """Tidegate: managed online endpoints for ML models, self-hosted, on Temporal."""
    from config.logging import configure_logging

    configure_logging(level="WARNING")


# ---- the local system --------------------------------------------------------------------
@main.command()
@click.option("--detach", is_flag=True, help="Start in the background and return when ready.")
@local_only
def up(detach: bool) -> None:
    """Start Temporal (dev server), the host, the gateway, the API and the worker; wait until ready."""
    from control import stack

    settings = load_settings()
    already = stack.running(settings)
    with err_console.status("starting Temporal, host, gateway, API and worker..."):
        try:
            stack.start(settings)
        except stack.StartFailed as err:
            stack.stop(settings)
            fail(str(err))
    _print_addresses(settings, already_running=bool(already))
    if detach:
        _exit(0)
    click.echo("Press Ctrl-C to stop.")
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stopping:
        time.sleep(0.2)
    click.echo("stopping: " + ", ".join(stack.stop(settings)))


def _print_addresses(settings: Settings, *, already_running: bool) -> None:
    from control.api_server import LOGIN_PATH, api_url

    ca = settings.tls_dir / "ca.pem"
    state = "already running" if already_running else "up"
    click.echo(f"Tidegate is {state} (home {settings.home})")
    click.echo(f"  gateway (HTTPS)  {settings.scoring_uri('<endpoint>')}")
    http = settings.scoring_uri_http("<endpoint>")
    click.echo(f"  gateway (HTTP)   {http or 'off (the data plane listens beyond loopback)'}")
    click.echo(f"  Temporal UI      {settings.temporal_ui_url}")
    click.echo(f"  Temporal         {settings.temporal_target} (namespace {settings.temporal_namespace})")
    click.echo(f"  host             {settings.host_target}")
    click.echo(f"  API              {api_url(settings)} (sign in at {LOGIN_PATH} so the UI decodes payloads)")
    click.echo(f"  dashboard        {api_url(settings)}/ui/ (sign in with the control credential)")
    click.echo(f"  control credential  {settings.home / 'control.token'} (mode 0600)")
    click.echo(f"Trust the local CA: curl --cacert {ca} ...  or  export CURL_CA_BUNDLE={ca}")
    click.echo(f"  (Python: export SSL_CERT_FILE={ca}  REQUESTS_CA_BUNDLE={ca})")


@main.command()
@local_only
def down() -> None:
    """Stop the local system started by `tidegate up --detach`."""
    from control import stack

    stopped = stack.stop(load_settings())
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def endpoint_name(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Endpoint names are case-insensitive, as in Azure: one spelling everywhere."""
    return value.lower() if value else value


@main.command()
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default="json")
@local_only
def status(output: str) -> None:
    """Say which local processes run, and their addresses."""
    from control import stack

    emit(stack.describe(load_settings()), output, None)


@main.command()
@local_only
def worker() -> None:
    """Run the Temporal worker alone (workflows and activities)."""
    from config.logging import configure_logging
    from worker.main import run

    configure_logging()
    run(load_settings())


@main.command()
@local_only
def gateway() -> None:
    """Run the gateway alone (data plane)."""
    from gateway.__main__ import main as gateway_main

    sys.exit(gateway_main())  # a refused bind or a taken port: one logged line and an exit code


@main.command()
@local_only
def api() -> None:
    """Run the control API alone: the REST API, the dashboard and the payload codec endpoint."""
    from config.logging import configure_logging
    from control.api_server import run

    configure_logging()
    run(load_settings())


@main.group(invoke_without_command=True)
@click.pass_context
def host(ctx: click.Context) -> None:
    """Run the local compute host alone (instances as azmlinfsrv processes); `host patch`."""
    if ctx.invoked_subcommand is not None:
        return  # `host patch` refuses --api itself, naming itself
    refuse_over_api(flag_only=True)
    from config.logging import configure_logging
    from host.server import run

    configure_logging()
    run(load_settings())


@host.command("patch")
@click.option(
    "-e",
    "--endpoint-name",
    "--endpoint",
    "endpoint",
    callback=endpoint_name,
    default=None,
    help="Default: every endpoint.",
)
@click.option("-d", "--deployment", default=None, help="Default: every deployment.")
@click.option("--no-wait", is_flag=True)
@azure_options
@direct_only
@run_async
async def host_patch(endpoint, deployment, no_wait, resource_group, workspace_name, output, query):
    """Replace every instance with one on a refreshed environment, rolling, as a workflow; with
    no endpoint or deployment named, then the gateways (on azure: their VMs onto the newest image)."""
    tg = await facade()
    with err_console.status("patching (a HostPatchWorkflow; watch it in the Temporal UI)..."):
        result = await tg.host_patch(endpoint, deployment, wait=not no_wait)
    emit(result, output, query)
    failed = [r for r in result.get("results", []) if r["outcome"] == "Failed"]
    if failed:
        fail(f"{failed[0]['endpoint']}/{failed[0]['deployment']}: {failed[0]['detail']}")
    gateways = result.get("gateways") or {}
    if gateways.get("outcome") == "Failed":
        fail(f"gateways: {gateways.get('detail', '')}")


# ---- online-endpoint -----------------------------------------------------------------------
@main.group("online-endpoint")
def online_endpoint() -> None:
    """Manage online endpoints (as `az ml online-endpoint`)."""


def _endpoint_spec(file: Path | None, name: str | None):
    from config.specs import EndpointSpec, validate_endpoint_name
    from config.yaml_loader import load_endpoint_file

    overrides = {"name": name} if name else None
    if file is not None:
        return load_endpoint_file(file, overrides=overrides)
    if name is None:
        raise click.UsageError("give --name or --file")
    return EndpointSpec(name=validate_endpoint_name(name))


@online_endpoint.command("create")
@click.option(
    "-n", "--name", callback=endpoint_name, default=None, help="Endpoint name; overrides the file's."
)
@click.option("-f", "--file", type=click.Path(path_type=Path), default=None)
@click.option("--no-wait", is_flag=True)
@azure_options
@run_async
async def endpoint_create(name, file, no_wait, resource_group, workspace_name, output, query):
    """Create an endpoint from its YAML (or just a name)."""
    spec = _endpoint_spec(file, name)
    tg = await facade()
    with err_console.status(f"creating endpoint {spec.name}..."):
        view = await tg.create_endpoint(spec, wait=not no_wait)
    emit(view, output, query)


@online_endpoint.command("show")
@click.option("-n", "--name", callback=endpoint_name, required=True)
@azure_options
@run_async
async def endpoint_show(name, resource_group, workspace_name, output, query):
    """Show an endpoint (name, scoring_uri, traffic, provisioning_state, ...); with the
    `tidegate/slo_availability` tag, its availability against that objective."""
    tg = await facade()
    view = await tg.show_endpoint(name)
    tags = dict(view.get("tags") or {})
    if SLO_TAG in tags:
        from control.dashboard.data import Source, availability_block

        source = Source(tg.settings)
        names = [d["name"] for d in await tg.list_deployments(name)]
        view["availability"] = availability_block(
            await source.availability(name, "", tags),
            await source.availability_by_deployment(name, names, tags),
        )
    emit(view, output, query)


@online_endpoint.command("list")
@azure_options
@run_async
async def endpoint_list(resource_group, workspace_name, output, query):
    """List endpoints."""
    emit(await (await facade()).list_endpoints(), output, query)


@online_endpoint.command("update")
@click.option("-n", "--name", callback=endpoint_name, default=None)
@click.option("-f", "--file", type=click.Path(path_type=Path), default=None)
@click.option("--traffic", default=None, help='Split, e.g. "blue=90 green=10".')
@click.option("--mirror-traffic", default=None, help='Shadow share, e.g. "green=10".')
@click.option("--set", "assignments", multiple=True, help="path=value (description, tags.x, properties.x).")
@azure_options
@run_async
async def endpoint_update(
    name, file, traffic, mirror_traffic, assignments, resource_group, workspace_name, output, query
):
    """Change traffic, mirror traffic, description, tags or properties (Tidegate's limits)."""
    from control.changes import endpoint_change

    if name is None and file is None:
        raise click.UsageError("give --name or --file")
    spec = _endpoint_spec(file, name) if file is not None else None
    target = name or (spec.name if spec is not None else "")
    tg = await facade()
    current = await tg.describe(target)
    change = endpoint_change(current, spec, traffic, mirror_traffic, list(assignments))
    emit(await tg.update_endpoint(target, change), output, query)


@online_endpoint.command("delete")
@click.option("-n", "--name", callback=endpoint_name, required=True)
@click.option("-y", "--yes", is_flag=True, help="Do not prompt for confirmation.")
@click.option("--no-wait", is_flag=True)
@azure_options
@run_async
async def endpoint_delete(name, yes, no_wait, resource_group, workspace_name, output, query):
    """Delete an endpoint and all its deployments."""
    if not yes and not click.confirm(f"Delete endpoint {name} and all its deployments?"):
        fail("not confirmed")
    tg = await facade()
    with err_console.status(f"deleting endpoint {name}..."):
        await tg.delete_endpoint(name, wait=not no_wait)


@online_endpoint.command("invoke")
@click.option("-n", "--name", callback=endpoint_name, required=True)
@click.option("-r", "--request-file", type=click.Path(path_type=Path), required=True)
@click.option("-d", "--deployment-name", default=None, help="Send to this deployment only.")
@azure_options
@run_async
async def endpoint_invoke(name, request_file, deployment_name, resource_group, workspace_name, output, query):
    """Send a request file to the endpoint's scoring URI with its key."""
    if not request_file.exists():
        raise TidegateError(f"--request-file: {request_file} does not exist")
    tg = await facade()
    status, body, answered_by = await tg.invoke(name, request_file.read_bytes(), deployment=deployment_name)
    if status != 200:
        fail(f"{status} from {answered_by or 'the gateway'}: {body.decode(errors='replace')}")
    click.echo(body.decode(errors="replace"))


@online_endpoint.command("get-credentials")
@click.option("-n", "--name", callback=endpoint_name, required=True)
@azure_options
@run_async
async def endpoint_credentials(name, resource_group, workspace_name, output, query):
    """Print the endpoint's primaryKey and secondaryKey, or for an aml_token endpoint a fresh
    accessToken with its expiryTimeUtc and refreshAfterTimeUtc."""
    tg = await facade()
    await tg.describe(name)
    emit(await tg.get_credentials(name), output, query)


@online_endpoint.command("regenerate-keys")
@click.option("-n", "--name", callback=endpoint_name, required=True)
@click.option("--key-type", type=click.Choice(["primary", "secondary"]), default="primary")
@azure_options
@run_async
async def endpoint_regenerate(name, key_type, resource_group, workspace_name, output, query):
    """Make a new primary or secondary key; the old one stops working at once. On an aml_token
    endpoint, a new primary also retires every token issued before."""
    await (await facade()).regenerate_keys(name, key_type)


# ---- online-deployment ---------------------------------------------------------------------
@main.group("online-deployment")
def online_deployment() -> None:
    """Manage online deployments (as `az ml online-deployment`)."""


def _deployment_spec(file: Path, name: str | None, endpoint: str | None, assignments: list[str]):
    """The YAML, then --set over it, then --name/--endpoint-name over both (as az ml does)."""
    from config.overrides import apply_set
    from config.yaml_loader import load_deployment_dict, read_yaml

    overrides: dict[str, Any] = {}
    if name:
        overrides["name"] = name
    if endpoint:
        overrides["endpoint_name"] = endpoint
    data = read_yaml(file)
    if assignments:
        data = apply_set(data, assignments)
    return load_deployment_dict(data, base_dir=file.absolute().parent, source=str(file), overrides=overrides)


@online_deployment.command("create")
@click.option("-n", "--name", default=None, help="Deployment name; overrides the file's.")
@click.option("-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, default=None)
@click.option("-f", "--file", type=click.Path(path_type=Path), required=True)
@click.option("--all-traffic", is_flag=True, help="Send all traffic here once it succeeds.")
@click.option("--set", "assignments", multiple=True, help="path=value over the file.")
@click.option("--no-wait", is_flag=True)
@azure_options
@run_async
async def deployment_create(
    name,
    endpoint,
    file,
    all_traffic,
    assignments,
    no_wait,
    resource_group,
    workspace_name,
    output,
    query,
):
    """Create a deployment and wait until it serves (or fails, with the reason)."""
    from config.contract.workflows import UpdateEndpointInput

    spec = _deployment_spec(file, name, endpoint, list(assignments))
    tg = await facade()
    view = await tg.create_deployment(spec)
    if not no_wait:
        with err_console.status(f"provisioning {spec.name} (environment, instances, readiness)..."):
            view = await tg.wait_deployment(spec.endpoint_name, spec.name)
        if all_traffic:
            current = await tg.show_endpoint(spec.endpoint_name)
            split = {k: 0 for k in current["traffic"]} | {spec.name: 100}
            await tg.update_endpoint(spec.endpoint_name, UpdateEndpointInput(traffic=split))
    emit(view, output, query)


@online_deployment.command("update")
@click.option("-n", "--name", default=None)
@click.option("-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, default=None)
@click.option("-f", "--file", type=click.Path(path_type=Path), default=None)
@click.option("--set", "assignments", multiple=True, help="path=value, e.g. instance_count=2.")
@click.option("--no-wait", is_flag=True)
@azure_options
@run_async
async def deployment_update(
    name, endpoint, file, assignments, no_wait, resource_group, workspace_name, output, query
):
    """Change a deployment from its YAML and/or --set; instances follow."""
    from config.overrides import apply_set
    from config.yaml_loader import load_deployment_dict

    tg = await facade()
    if file is not None:
        spec = _deployment_spec(file, name, endpoint, list(assignments))
    else:
        if not (name and endpoint):
            raise click.UsageError("give --file, or --name and --endpoint-name")
        current = await tg.deployment_spec(endpoint, name)
        spec = load_deployment_dict(
            apply_set(current, list(assignments)), base_dir=Path.cwd(), source=f"{endpoint}/{name}"
        )
    view = await tg.update_deployment(spec)
    if not no_wait:
        with err_console.status(f"updating {spec.name}..."):
            view = await tg.wait_deployment(spec.endpoint_name, spec.name)
    emit(view, output, query)


@online_deployment.command("show")
@click.option("-n", "--name", required=True)
@click.option("-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, required=True)
@azure_options
@run_async
async def deployment_show(name, endpoint, resource_group, workspace_name, output, query):
    """Show a deployment."""
    emit(await (await facade()).show_deployment(endpoint, name), output, query)


@online_deployment.command("list")
@click.option("-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, required=True)
@azure_options
@run_async
async def deployment_list(endpoint, resource_group, workspace_name, output, query):
    """List an endpoint's deployments."""
    emit(await (await facade()).list_deployments(endpoint), output, query)


@online_deployment.command("delete")
@click.option("-n", "--name", required=True)
@click.option("-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, required=True)
@click.option("-y", "--yes", is_flag=True)
@click.option("--no-wait", is_flag=True)
@azure_options
@run_async
async def deployment_delete(name, endpoint, yes, no_wait, resource_group, workspace_name, output, query):
    """Delete a deployment that takes no traffic."""
    if not yes and not click.confirm(f"Delete deployment {name} of {endpoint}?"):
        fail("not confirmed")
    tg = await facade()
    with err_console.status(f"deleting deployment {name}..."):
        await tg.delete_deployment(endpoint, name, wait=not no_wait)


@online_deployment.command("get-logs")
@click.option("-n", "--name", required=True)
@click.option("-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, required=True)
@click.option("-l", "--lines", type=int, default=100, show_default=True)
@click.option(
    "--request-id",
    help="only this request: its gateway access-log line and what each instance logged serving it "
    "(the x-request-id the client got)",
)
@azure_options
@run_async
async def deployment_logs(name, endpoint, lines, request_id, resource_group, workspace_name, output, query):
    """Print the last lines of each instance's log (the scoring server's stdout and stderr)."""
    click.echo(await (await facade()).get_logs(endpoint, name, lines, request_id=request_id))


# ---- rollout (Tidegate's own) ---------------------------------------------------------------
@main.group("rollout")
def rollout() -> None:
    """Canary, linear and blue/green rollouts gated on live metrics (RolloutWorkflow)."""


def _rollout_spec(
    file: Path | None,
    strategy: str | None,
    steps: str | None,
    hold: str | None,
    gates: tuple[str, ...],
    check_interval: str | None,
):
    """rollout.yml, then the flags over it."""
    from pydantic import ValidationError

    from config.rollout import RolloutSpec
    from config.yaml_loader import load_rollout_file

    spec = load_rollout_file(file) if file is not None else RolloutSpec()
    data = spec.model_dump(exclude_unset=True) if file is not None else {}
    if strategy:
        data["strategy"] = strategy
    if steps:
        try:
            weights = [int(w) for w in steps.split(",")]
        except ValueError:
            raise TidegateError(f"--steps: '{steps}' must be weights like 10,25,50,100") from None
        data["steps"] = [{"weight": w, "hold": hold or "60s"} for w in weights]
    elif hold and data.get("steps"):
        data["steps"] = [{**step, "hold": hold} for step in data["steps"]]
    if gates:
        data["gates"] = [{"when": g} for g in gates]
    if check_interval:
        data["check_interval"] = check_interval
    try:
        return RolloutSpec.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise TidegateError(f"rollout: {problems}") from None


def rollout_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            click.option(
                "-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, required=True
            ),
            click.option("--to", "to", required=True, help="The canary deployment."),
            click.option("--baseline", default=None, help="Default: the deployment with most traffic."),
            click.option("-f", "--file", type=click.Path(path_type=Path), default=None, help="rollout.yml"),
            click.option("--strategy", type=click.Choice(["canary", "linear", "blue_green"]), default=None),
            click.option("--steps", default=None, help="Canary weights, e.g. 10,25,50,100."),
            click.option("--hold", default=None, help="Hold per step, e.g. 60s."),
            click.option("--gate", "gates", multiple=True, help='e.g. "error_rate <= 0.05" (repeatable).'),
            click.option("--check-interval", default=None, help="e.g. 5s (the default)."),
        ]
    ):
        fn = decorator(fn)
    return fn


@rollout.command("plan")
@rollout_options
@click.option(
    "-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True
)
@click.option("-w", "--workspace-name", default=None, help=GROUP_HELP)
@click.option("-g", "--resource-group", default=None, help=GROUP_HELP)
@run_async
async def rollout_plan(
    endpoint,
    to,
    baseline,
    file,
    strategy,
    steps,
    hold,
    gates,
    check_interval,
    output,
    workspace_name,
    resource_group,
):
    """Dry run: print every step, gate and timeout; start nothing."""
    from control.rollouts import describe_plan

    spec = _rollout_spec(file, strategy, steps, hold, gates, check_interval)
    plan = await (await facade()).rollouts().plan(endpoint, to, spec, baseline)
    if output == "text":
        click.echo("\n".join(describe_plan(plan)))
    else:
        emit(plan.model_dump(mode="json"), output, None)


@rollout.command("start")
@rollout_options
@click.option("--no-wait", is_flag=True, help="Return once started; steer with the other verbs.")
@azure_options
@run_async
async def rollout_start(
    endpoint,
    to,
    baseline,
    file,
    strategy,
    steps,
    hold,
    gates,
    check_interval,
    no_wait,
    resource_group,
    workspace_name,
    output,
    query,
):
    """Start a RolloutWorkflow; by default wait, and exit 1 if it rolls back."""
    from control.rollouts import describe_plan

    rollouts = (await facade()).rollouts()
    spec = _rollout_spec(file, strategy, steps, hold, gates, check_interval)
    plan = await rollouts.plan(endpoint, to, spec, baseline)
    rid = await rollouts.start(plan, spec)
    err_console.print(f"started {rid}")
    for line in describe_plan(plan):
        err_console.print(f"  {line}")
    if no_wait:
        emit(await rollouts.status(endpoint, rid), output, query)
        return
    view = await rollouts.wait(endpoint, rid, _rollout_progress())
    emit(view, output, query)
    _exit_for(view)


def _exit_for(view: dict[str, Any]) -> None:
    """0 Succeeded, 1 RolledBack, 2 Paused (waiting for `rollout resume|promote|rollback`)."""
    if view["phase"] == "Paused":
        err_console.print(
            f"rollout {view['id']} is paused: {view['reason']}; "
            f"steer it with `tidegate rollout resume|promote|rollback --endpoint {view['endpoint']}`"
        )
        _exit(2)
    if view["phase"] != "Succeeded":
        fail(f"rollout {view['id']} {view['phase']}: {view['reason']}")


def _rollout_progress() -> Callable[[dict[str, Any]], None]:
    last: list[tuple] = []

    def show(view: dict[str, Any]) -> None:
        key = (view["phase"], view["step"], view["weights"][view["to"]])
        if last and last[-1] == key:
            return
        last.append(key)
        gates = "; ".join(f"{g['outcome']}: {g['detail']}" for g in view["gates"])
        err_console.print(
            f"{view['phase']:<12} step {view['step']:<5} {view['to']} {view['weights'][view['to']]}%"
            + (f"  [{gates}]" if gates else "")
        )

    return show


@rollout.command("status")
@click.option("-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, required=True)
@click.option("--watch", is_flag=True, help="Follow until the rollout ends.")
@azure_options
@run_async
async def rollout_status(endpoint, watch, resource_group, workspace_name, output, query):
    """Phase, step, weights, each gate's last value against its bound, and history."""
    rollouts = (await facade()).rollouts()
    if watch:
        rid = await rollouts.current_id(endpoint)
        view = await rollouts.wait(endpoint, rid, _rollout_progress())
        emit(view, output, query)
        _exit_for(view)
    else:
        emit(await rollouts.status(endpoint), output, query)


def _steer(name: str, doc: str, with_reason: bool) -> None:
    @click.option("-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, required=True)
    @azure_options
    @run_async
    async def command(endpoint, resource_group, workspace_name, output, query, reason=None):
        rid = await (await facade()).rollouts().signal(endpoint, name, reason)
        err_console.print(f"{name} sent to {rid}")

    command.__doc__ = doc
    if with_reason:
        command = click.option("--reason", default=None, help="Recorded in the rollout's history.")(command)
    rollout.command(name)(command)


_steer(RolloutSignal.PAUSE, "Hold the rollout where it is until resume.", True)
_steer(RolloutSignal.RESUME, "Continue a paused rollout.", False)
_steer(RolloutSignal.PROMOTE, "Skip the remaining steps: the canary gets all traffic now.", True)
_steer(RolloutSignal.ROLLBACK, "Traffic back to the baseline now; the canary keeps no traffic.", True)
_steer(
    RolloutSignal.UNDO, "After a success, traffic back to the previous deployment while it is warm.", False
)


@rollout.command("retry")
@click.option("-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, required=True)
@azure_options
@direct_only
@run_async
async def rollout_retry(endpoint, resource_group, workspace_name, output, query):
    """After a rollback: the same plan again (returns once started)."""
    rid, _ = await (await facade()).rollouts().retry(endpoint)
    emit({"id": rid}, output, query)


@rollout.command("list")
@click.option("-e", "--endpoint-name", "--endpoint", "endpoint", callback=endpoint_name, default=None)
@click.option("--state", type=click.Choice(["running", "succeeded", "rolled_back", "paused"]), default=None)
@azure_options
@run_async
async def rollout_list(endpoint, state, resource_group, workspace_name, output, query):
    """Rollouts, newest first, from Temporal's visibility (search attributes)."""
    emit(await (await facade()).rollouts().list(endpoint, state), output, query)


# ---- model ---------------------------------------------------------------------------------
@main.group("model")
def model() -> None:
    """Register models (`azureml:<name>:<version>` in deployment YAML)."""


def _artifacts():
    from activities.providers import provider

    return provider("artifacts", load_settings())


async def _models():
    """The model registry: through the REST API with `--api`, else this machine's store (no
    Temporal needed)."""
    url = _api_url()
    if url:
        return await facade()
    from control.models import LocalModels

    return LocalModels(_artifacts())


@model.command("create")
@click.option("-n", "--name", required=True)
@click.option("-v", "--version", default="1", show_default=True)
@click.option("-p", "--path", type=click.Path(path_type=Path), required=True)
@click.option("--description", default=None)
@azure_options
@run_async
async def model_create(name, version, path, description, resource_group, workspace_name, output, query):
    """Copy a model file or folder into the registry, content-hashed (with --api: sent as an
    archive to the API's machine)."""
    emit(await (await _models()).create_model(name, version, path, description), output, query)


@model.command("list")
@click.option("-n", "--name", default=None)
@azure_options
@run_async
async def model_list(name, resource_group, workspace_name, output, query):
    """List registered models."""
    emit(await (await _models()).list_models(name), output, query)


@model.command("show")
@click.option("-n", "--name", required=True)
@click.option("-v", "--version", required=True)
@azure_options
@run_async
async def model_show(name, version, resource_group, workspace_name, output, query):
    """Show a registered model."""
    emit(await (await _models()).show_model(name, version), output, query)


if __name__ == "__main__":
    main()
