"""Run under a Python that has azure-ai-ml (not Tidegate's own virtualenv: see
test_arm_api_sdk.py). Drives Tidegate's REST API with Azure ML's SDK v2 `MLClient`, given a
custom cloud whose resource manager is the API; prints one JSON object per command.

    python sdk_client.py API_URL TOKEN_FILE create ENDPOINT
    python sdk_client.py API_URL TOKEN_FILE traffic ENDPOINT DEPLOYMENT
    python sdk_client.py API_URL TOKEN_FILE invoke ENDPOINT REQUEST_FILE
    python sdk_client.py API_URL TOKEN_FILE delete ENDPOINT
    python sdk_client.py API_URL TOKEN_FILE register-model NAME VERSION URI
    python sdk_client.py API_URL TOKEN_FILE assets MODEL CODE ENVIRONMENT   (each name:version)
    python sdk_client.py API_URL TOKEN_FILE deploy ENDPOINT DEPLOYMENT MODEL CODE ENVIRONMENT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from azure.ai.ml import MLClient
from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, ManagedOnlineEndpoint, Model
from azure.core.credentials import AccessToken

FAR_FUTURE = 4102444800  # the control credential does not expire


class ControlCredential:
    """A TokenCredential that hands out Tidegate's control credential as the bearer."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, FAR_FUTURE)


def client(api: str, token: str) -> MLClient:
    root = api.rstrip("/") + "/"
    return MLClient(
        ControlCredential(token),
        "sub-sdk",
        "rg-sdk",
        "ws-sdk",
        cloud="Tidegate",
        cloud_metadata={
            "resource_manager": root,
            "azure_portal": root,
            "active_directory": root,
            "aml_resource_id": root,
            "storage_endpoint": "core.windows.net",
            "registry_discovery_endpoint": root,
        },
    )


def main(argv: list[str]) -> dict[str, Any]:
    api, token_file, command, endpoint, *rest = argv
    ml = client(api, Path(token_file).read_text().strip())
    if command == "create":
        made = ml.online_endpoints.begin_create_or_update(
            ManagedOnlineEndpoint(name=endpoint, auth_mode="key")
        )
        result = made.result()
        keys = ml.online_endpoints.get_keys(endpoint)
        return {
            "name": result.name,
            "provisioning_state": str(result.provisioning_state),
            "scoring_uri": result.scoring_uri,
            "has_keys": bool(keys.primary_key and keys.secondary_key),
        }
    if command == "traffic":
        current = ml.online_endpoints.get(endpoint)
        current.traffic = {rest[0]: 100}
        updated = ml.online_endpoints.begin_create_or_update(current).result()
        return {"traffic": dict(ml.online_endpoints.get(endpoint).traffic), "name": updated.name}
    if command == "invoke":
        answer = ml.online_endpoints.invoke(endpoint_name=endpoint, request_file=rest[0])
        return {"answer": json.loads(answer)}
    if command == "delete":
        ml.online_endpoints.begin_delete(name=endpoint).result()
        names = [e.name for e in ml.online_endpoints.list()]
        return {"listed_after": names}
    if command == "register-model":  # here `endpoint` is the model's name
        version, uri = rest
        made = ml.models.create_or_update(Model(name=endpoint, version=version, path=uri))
        return {"name": made.name, "version": made.version, "path": made.path}
    if command == "assets":  # here `endpoint` is the model's name:version
        model_name, model_version = endpoint.split(":")
        code_name, code_version = rest[0].split(":")
        env_name, env_version = rest[1].split(":")
        model = ml.models.get(model_name, model_version)
        code = ml._code.get(code_name, code_version)
        environment = ml.environments.get(env_name, env_version)
        return {
            "model": {"id": model.id, "path": model.path, "created_by": model.creation_context.created_by},
            "model_versions": [m.version for m in ml.models.list(name=model_name)],
            "code": {"id": code.id, "path": code.path},
            "environment": {
                "id": environment.id,
                "image": environment.image,
                "conda_file": environment.conda_file,
            },
            "environment_versions": [e.version for e in ml.environments.list(name=env_name)],
        }
    if command == "deploy":
        name, model, code, environment = rest
        deployment = ManagedOnlineDeployment(
            name=name,
            endpoint_name=endpoint,
            model=f"azureml:{model}",
            code_configuration=CodeConfiguration(code=f"azureml:{code}", scoring_script="score.py"),
            environment=f"azureml:{environment}",
            instance_type="Standard_DS3_v2",
            instance_count=1,
        )
        made = ml.online_deployments.begin_create_or_update(deployment).result()
        shown = ml.online_deployments.get(name, endpoint)
        return {
            "provisioning_state": str(made.provisioning_state),
            "model": shown.model,
            "code": shown.code_configuration.code,
            "environment": shown.environment,
        }
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
