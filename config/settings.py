"""Settings shared by every Tidegate process (env prefix ``TIDEGATE_``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    task_queue: str = "tidegate"

    # Gateway (data plane)
    bind_host: str = "127.0.0.1"
    domain: str = "localhost"
    gateway_https_port: int = 8443
    gateway_http_port: int = 8080
    gateway_admin_port: int = 8081
    gateway_workers: int = Field(default=1, ge=1, description="processes sharing the ports (SO_REUSEPORT)")
    gateway_admin_urls: list[str] | None = Field(
        default=None, description="admin URLs of every gateway the route table is pushed to"
    )
    max_request_bytes: int = 16 * 1024 * 1024

    # Local compute host
    host_port: int = 8082
    host_url: str | None = None
    instance_port_start: int = 31000

    # How often an endpoint re-pushes its route table so a gateway that lost state heals.
    route_repush_seconds: float = 30.0
    # Where gates and autoscaling read their windows: the gateways' /stats, or Prometheus.
    monitor_provider: Literal["local", "prometheus"] = "local"
    prometheus_url: str = "http://127.0.0.1:9090"

    # Autoscale: how long utilisation must stay low before one instance goes (Azure has no field).
    scale_in_cooldown_seconds: float = 300.0

    # Secrets are never in settings dumps.
    admin_token: SecretStr | None = None

    @cached_property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def gateway_admin_targets(self) -> list[str]:
        if self.gateway_admin_urls:
            return list(self.gateway_admin_urls)
        return [f"http://127.0.0.1:{self.gateway_admin_port}"]

    @property
    def admin_headers(self) -> dict[str, str]:
        """What a caller of the gateways' admin API sends (the token, when one is set)."""
        token = self.admin_token
        return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    @property
    def host_target(self) -> str:
        return self.host_url or f"http://127.0.0.1:{self.host_port}"

    @property
    def gateway_https_url(self) -> str:
        return f"https://{self.domain}:{self.gateway_https_port}"

    @property
    def gateway_http_url(self) -> str:
        return f"http://{self.domain}:{self.gateway_http_port}"

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
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def scoring_uri(self, endpoint: str) -> str:
        return f"https://{endpoint}.{self.domain}:{self.gateway_https_port}/score"

    def scoring_uri_http(self, endpoint: str) -> str:
        return f"http://{endpoint}.{self.domain}:{self.gateway_http_port}/score"

    def openapi_uri(self, endpoint: str) -> str:
        return f"https://{endpoint}.{self.domain}:{self.gateway_https_port}/swagger.json"


def load_settings() -> Settings:
    return Settings()
