"""Settings shared by every Tidegate process (env prefix ``TIDEGATE_``)."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.contract.defaults import DEFAULT_MAX_REQUEST_BYTES
from config.contract.names import TASK_QUEUE

# The kinds of provider the worker and the façade pick by name (activities/providers.py).
ProviderKind = Literal["compute", "network", "monitor", "secrets", "artifacts"]


def _default_home() -> Path:
    return Path.home() / ".tidegate"


class Settings(BaseSettings):
    """One place for every address, port and path. Two stacks differ only in these."""

    model_config = SettingsConfigDict(env_prefix="TIDEGATE_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="state dir")

    # Temporal: `tidegate up` starts a dev server on these ports; alone, point at a cluster.
    temporal_address: str | None = Field(
        default=None, description="host:port of an existing Temporal frontend"
    )
    temporal_namespace: str = "default"
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_ca: Path | None = None
    task_queue: str = TASK_QUEUE

    # Listeners, each on its own address. The control listeners (gateway admin, host API)
    # stay on loopback unless told; beyond it they need TLS (control_tls_cert/key) and always
    # the control credential. The plain-HTTP data plane is off once the data plane leaves loopback.
    gateway_https_bind: str = "127.0.0.1"
    gateway_http_bind: str = "127.0.0.1"
    gateway_http_enabled: bool | None = Field(
        default=None, description="plain-HTTP data plane; default: on while both data binds are loopback"
    )
    gateway_admin_bind: str = "127.0.0.1"
    host_bind: str = "127.0.0.1"
    control_tls_cert: Path | None = Field(default=None, description="certificate a control listener serves")
    control_tls_key: Path | None = None
    control_ca_file: Path | None = Field(
        default=None, description="CA bundle a client trusts for https control URLs"
    )

    # Gateway (data plane)
    domain: str = "localhost"
    gateway_https_port: int = 8443
    gateway_http_port: int = 8080
    gateway_admin_port: int = 8081
    gateway_workers: int = Field(default=1, ge=1, description="processes sharing the ports (SO_REUSEPORT)")
    gateway_admin_urls: list[str] | None = Field(
        default=None, description="admin URLs of every gateway the route table is pushed to"
    )
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    # A certificate (PEM chain and key) the data plane serves as given, instead of the local CA's
    # (gateway VMs on Azure are handed one; they hold no CA key).
    gateway_tls_cert: Path | None = None
    gateway_tls_key: Path | None = None
    # Which answers count against an endpoint's availability (the dashboard, `online-endpoint
    # show`): keys of config.stats.STATUS_KEYS; JSON in the environment, e.g. ["5xx","408","429"].
    availability_failure_statuses: list[Literal["4xx", "5xx", "408", "424", "429", "503"]] = Field(
        default=["5xx", "408"], min_length=1
    )
    # Gateway: slow and hostile clients (each gateway process on its own), and its log's size.
    gateway_header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a request's line and headers must arrive within this; else 408"
    )
    gateway_min_body_bytes_per_second: float = Field(
        default=1024.0, ge=0, description="slowest request body accepted once the grace is over; 0: any"
    )
    gateway_body_grace_seconds: float = Field(
        default=5.0, ge=0, description="a request body's first seconds, before the minimum rate applies"
    )
    gateway_max_connections: int = Field(
        default=10_000, ge=1, description="client connections per gateway process; more are closed at once"
    )
    gateway_idle_timeout_seconds: float = Field(
        default=30.0, gt=0, description="client connections idle this long (up to twice it) are closed"
    )
    gateway_access_log_max_bytes: int = Field(
        default=100 * 1024 * 1024, ge=64 * 1024, description="access.log is rotated at this size"
    )
    gateway_access_log_backups: int = Field(default=5, ge=0, description="rotated access logs kept")
    gateway_access_log_echo: bool = Field(
        default=False, description="also write each access line to stderr (not rotated; for a terminal)"
    )

    # Local compute host
    host_port: int = 8082
    host_url: str | None = None
    instance_port_start: int = 31000
    # Keep each instance's own code (score.py runs as this OS user) out of the state dir and
    # the user's home: "auto" with Landlock where the kernel has it, "landlock" or refuse to
    # start, "off" (host/confinement.py).
    instance_confinement: Literal["auto", "landlock", "off"] = "auto"

    # How often an endpoint re-pushes its route table so a gateway that lost state heals.
    route_repush_seconds: float = 30.0

    # Providers: who runs instances, routes traffic, measures, keeps keys and artifacts.
    # `provider` names them all; a per-kind setting overrides it for that kind (e.g.
    # TIDEGATE_MONITOR_PROVIDER=prometheus: gates and autoscaling read PromQL, not /stats).
    provider: str = "local"
    compute_provider: str | None = None
    network_provider: str | None = None
    monitor_provider: str | None = None
    secrets_provider: str | None = None
    artifacts_provider: str | None = None
    prometheus_url: str = "http://127.0.0.1:9090"
    # OpenTelemetry traces: an OTLP/HTTP receiver's base URL (a collector, Jaeger, Tempo...,
    # e.g. http://127.0.0.1:4318; spans go to <url>/v1/traces). The gateway sends a span per
    # request and the worker one per workflow and activity. Unset: no tracing, no cost.
    # The exporter's other knobs are OpenTelemetry's own (OTEL_EXPORTER_OTLP_HEADERS,
    # OTEL_TRACES_SAMPLER, OTEL_BSP_*).
    otlp_endpoint: str | None = None

    # Azure (TIDEGATE_PROVIDER=azure, or one kind: TIDEGATE_COMPUTE_PROVIDER=azure...): where
    # scale sets live and what their VMs boot, the Blob container for artifacts, Azure Monitor.
    # Credentials come from azure-identity (DefaultAzureCredential: managed identity on a VM,
    # CLI login on a laptop); an account key is only for Azurite or an account without Entra ID.
    azure_subscription_id: str | None = None
    azure_resource_group: str | None = None
    azure_location: str | None = Field(default=None, description="region, e.g. westeurope")
    azure_vnet: str | None = Field(default=None, description="virtual network in the resource group")
    azure_subnet: str | None = Field(default=None, description="subnet of azure_vnet the instances join")
    azure_image: str = Field(
        default="Canonical:ubuntu-24_04-lts:server:latest",
        description="publisher:offer:sku:version, or an image resource id (/subscriptions/...); "
        "the image must carry Tidegate at /opt/tidegate/.venv",
    )
    azure_admin_username: str = "tidegate"
    azure_ssh_public_key: str | None = Field(default=None, description="OpenSSH public key text")
    azure_dns_label_prefix: str | None = None
    azure_instance_port: int = Field(default=5001, description="the fixed port azmlinfsrv serves on each VM")
    azure_watch_interval_seconds: float = Field(
        default=25.0, gt=0, description="how often the shared watcher lists the resource group"
    )
    azure_drain_seconds: float = Field(
        default=15.0,
        ge=0,
        description="how long a VM leaving in a rolling update is out of the routes before it is "
        "deleted (a watch interval to be seen, the route push, the requests it holds)",
    )
    azure_storage_account_url: str | None = Field(
        default=None,
        description="https://<account>.blob.core.windows.net (Azurite: http://127.0.0.1:<port>/devstoreaccount1)",
    )
    azure_storage_container: str = "tidegate"
    azure_storage_account_key: SecretStr | None = Field(
        default=None, description="shared key; unset, the identity's user delegation key signs SAS URLs"
    )
    azure_snapshot_url_ttl_seconds: float = Field(
        default=24 * 3600.0,
        ge=3600,
        le=7 * 24 * 3600,
        description="how long a snapshot URL in a scale set's custom data is valid; a PUT signs a new "
        "one once half of this has passed (README: Running on Azure (compute), artifacts)",
    )
    azure_instance_artifacts_dir: str = Field(
        default="/var/lib/tidegate/artifacts", description="where a VM's bootstrap unpacks snapshots"
    )
    azure_metrics_endpoint: str | None = Field(
        default=None, description="metrics data plane; default https://<location>.metrics.monitor.azure.com"
    )
    # Azure network (TIDEGATE_NETWORK_PROVIDER=azure): each endpoint gets a public IP with the DNS
    # label `<azure_dns_label_prefix>-<endpoint>`, and a frontend and rule (azure_frontend_port ->
    # gateway_https_port) on one shared Standard Load Balancer in front of the gateway VMs'
    # backend pool; one NSG lets only the gateways' subnet reach the instances' port.
    azure_load_balancer: str = Field(default="tidegate-gateways", description="the gateways' load balancer")
    azure_gateway_backend_pool: str = Field(
        default="gateways", description="its backend pool, which the gateway scale set's NICs join"
    )
    azure_gateway_subnet_prefix: str | None = Field(
        default=None, description="CIDR of the gateways' subnet, e.g. 10.0.1.0/24: who may reach instances"
    )
    azure_instances_nsg: str = Field(
        default="tidegate-instances", description="NSG for the instances' subnet (or their NICs)"
    )
    azure_gateways_nsg: str = Field(
        default="tidegate-gateways",
        description="NSG on the gateway VMs' NICs: lets clients reach their HTTPS port through the "
        "Standard Load Balancer, which admits nothing an NSG does not allow",
    )
    azure_frontend_port: int = Field(default=443, description="the port clients call on an endpoint's IP")
    azure_network_recheck_seconds: float = Field(
        default=600.0,
        ge=0,
        description="a re-push within this long of a converged one spends no ARM call on the network",
    )
    # The gateway scale set (activities/azure/gateways.py): Tidegate's gateways as VMs of one
    # scale set whose NICs join the backend pool; route tables go to each VM's admin API.
    azure_gateway_instances: int = Field(
        default=2, ge=0, description="gateway VMs; 0: no gateway scale set (gateway_admin_urls only)"
    )
    azure_gateway_scale_set: str = Field(default="tg-gateways", description="the gateways' scale set")
    azure_gateway_vm_size: str = Field(default="Standard_D2s_v5", description="the gateway VMs' size")
    azure_gateway_subnet: str = Field(
        default="gateways", description="subnet of azure_vnet the gateway VMs join (its prefix: below)"
    )
    azure_gateway_list_seconds: float = Field(
        default=10.0, ge=0, description="how long one list of the gateway VMs is trusted by route pushes"
    )
    azure_gateway_drain_seconds: float | None = Field(
        default=None,
        ge=0,
        description="how long a gateway VM a host patch told to drain keeps serving before it is deleted "
        "(default: the balancer probe's detection time, 2 x 5 s, plus 5 s; 0: deleted at once)",
    )
    azure_gateway_ready_seconds: float = Field(
        default=900.0,
        gt=0,
        description="how long a host patch waits for a new gateway VM to run and hold every route "
        "table before it gives the VM up and fails the gateways' patch",
    )
    azure_gateway_tls_cert: Path | None = Field(
        default=None, description="PEM chain the gateway VMs serve HTTPS with; unset, one the worker makes"
    )
    azure_gateway_tls_key: Path | None = None
    azure_access_token: SecretStr | None = Field(
        default=None, description="an ARM bearer token to use instead of DefaultAzureCredential (short jobs)"
    )
    # Tests point the SDKs at local fakes: ARM's URL, and the CA that signed the fakes' certificates.
    azure_arm_url: str | None = Field(default=None, description="ARM base URL; unset: Azure's public cloud")
    azure_ca_file: Path | None = Field(
        default=None, description="CA bundle trusted for Azure endpoints (a local fake); unset, the system's"
    )

    # Autoscale: how long utilisation must stay low before one instance goes (Azure has no field).
    scale_in_cooldown_seconds: float = 300.0

    # Environments: pip option lines (--index-url, -e, URLs, VCS) run code from anywhere.
    allow_pip_options: bool = False

    # The control credential; unset, it is read from (or made in) $TIDEGATE_HOME/control.token.
    # Secrets are never in settings dumps.
    control_token: SecretStr | None = None
    # The payload codec's key (urlsafe base64 of 32 bytes); unset, it is read from (or made in)
    # $TIDEGATE_HOME/codec.key. Every client and worker of a namespace needs the same one.
    codec_key: SecretStr | None = None
    # The Application Insights instrumentation key (a GUID) that instances of deployments with
    # `app_insights_enabled: true` send their telemetry with (azmlinfsrv's own export).
    app_insights_key: SecretStr | None = None
    # Endpoint tokens (auth_mode: aml_token) from get-credentials live this long (Azure: 24 h);
    # clients are told to refresh after half.
    token_lifetime_seconds: int = Field(default=24 * 3600, ge=60)

    # The control API (`tidegate api`; for now the payload codec endpoint): a control listener.
    api_bind: str = "127.0.0.1"
    api_port: int = 8083
    # The CLI's way in: unset, straight to Temporal; set (or `tidegate --api URL`), through the
    # REST API at this URL (the control credential as bearer, the control CA for https).
    api_url: str | None = Field(default=None, description="the REST API the CLI goes through")
    # An archive uploaded to the REST API (POST .../workspaces/<ws>/uploads): its bytes, and what
    # it unpacks to, at most this many bytes each.
    api_upload_max_bytes: int = Field(default=1024**3, ge=1)

    @cached_property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def gateway_admin_targets(self) -> list[str]:
        if self.gateway_admin_urls:
            return list(self.gateway_admin_urls)
        return [f"http://127.0.0.1:{self.gateway_admin_port}"]

    @property
    def host_target(self) -> str:
        return self.host_url or f"http://127.0.0.1:{self.host_port}"

    @property
    def azure_metrics_url(self) -> str:
        """The regional metrics endpoint the batch API is served from."""
        if self.azure_metrics_endpoint:
            return self.azure_metrics_endpoint.rstrip("/")
        if not self.azure_location:
            raise ValueError("TIDEGATE_AZURE_LOCATION (or TIDEGATE_AZURE_METRICS_ENDPOINT) is required")
        return f"https://{self.azure_location}.metrics.monitor.azure.com"

    def provider_name(self, kind: ProviderKind) -> str:
        """The provider of `kind`: its own setting, else `provider`."""
        chosen: str | None = getattr(self, f"{kind}_provider")
        if chosen is None and kind == "artifacts" and self.azure_storage_account_url:
            # VMs fetch snapshots from Blob storage: the façade must put them there.
            if self.provider_name("compute") == "azure":
                return "azure"
        return chosen or self.provider

    @property
    def temporal_ui_url(self) -> str:
        return f"http://127.0.0.1:{self.temporal_ui_port}"

    # Paths inside the state dir: one function each, so nobody spells them twice.
    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def gateway_dir(self) -> Path:
        return self.home / "gateway"

    @property
    def host_dir(self) -> Path:
        return self.home / "host"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def registry_dir(self) -> Path:
        return self.home / "models"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def host_routed(self) -> bool:
        """Scoring URIs name the endpoint in the host (`<ep>.<domain>`) only for a configured
        domain with real DNS; `*.localhost` resolves in curl and browsers but not in glibc,
        so on `localhost` the URI names it in the path, which every client can call."""
        return self.domain.lower() != "localhost"

    @property
    def http_data_plane(self) -> bool:
        """The plain-HTTP data plane listens: as set, else only while it stays on loopback."""
        if self.gateway_http_enabled is not None:
            return self.gateway_http_enabled
        return is_loopback(self.gateway_https_bind) and is_loopback(self.gateway_http_bind)

    def _endpoint_url(self, scheme: str, port: int, endpoint: str, path: str) -> str:
        if self.host_routed:
            return f"{scheme}://{endpoint}.{self.domain}:{port}{path}"
        return f"{scheme}://{self.domain}:{port}/endpoints/{endpoint}{path}"

    @property
    def azure_routed(self) -> bool:
        """Endpoints are reached through the Azure load balancer: each at its public IP's name."""
        return self.provider_name("network") == "azure" and bool(self.azure_location)

    def scoring_uri(self, endpoint: str) -> str:
        if self.azure_routed:
            from config.azure_network import azure_scoring_uri  # it imports this module

            return azure_scoring_uri(self, endpoint)
        return self._endpoint_url("https", self.gateway_https_port, endpoint, "/score")

    def scoring_uri_http(self, endpoint: str) -> str | None:
        if not self.http_data_plane or self.azure_routed:  # the load balancer forwards HTTPS only
            return None
        return self._endpoint_url("http", self.gateway_http_port, endpoint, "/score")

    def openapi_uri(self, endpoint: str) -> str:
        if self.azure_routed:
            from config.azure_network import azure_endpoint_url

            return azure_endpoint_url(self, endpoint, "/swagger.json")
        return self._endpoint_url("https", self.gateway_https_port, endpoint, "/swagger.json")


def is_loopback(bind: str) -> bool:
    """Does a listener bound here take connections from this machine only?"""
    if bind.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, assume the network


def load_settings() -> Settings:
    return Settings()
