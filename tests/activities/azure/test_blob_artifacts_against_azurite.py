"""`azure` artifacts against Azurite: the real azure-storage-blob SDK, real HTTP, Microsoft's emulator
started for this module on a port of its own, its well-known development account key."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient

from activities.artifacts import RegisteredAsset
from activities.azure.artifacts import BlobArtifactStore, SnapshotFetchError, fetch_snapshot
from activities.azure.snapshot_sas import SnapshotRef, SnapshotSigner
from activities.local.artifacts import LocalArtifactStore, content_hash
from activities.providers import provider
from config.contract.errors import Conflict, NotFound
from config.host_api import DeploymentRuntime
from config.settings import Settings
from tests.support.azurite import DEV_ACCOUNT, DEV_KEY, Azurite, node, run_azurite

pytestmark = pytest.mark.skipif(node() is None, reason="node is not installed, so Azurite cannot run")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with run_azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


class Requests:
    """Every request the SDK sends, as (method, path) — how the tests count uploads."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, request: Any) -> None:
        http = request.http_request
        self.seen.append((http.method, http.url.split("?")[0]))

    def puts(self, under: str) -> int:
        return sum(1 for method, path in self.seen if method == "PUT" and f"/{under}" in path)


def make_store(azurite: Azurite, container: str, requests: Requests | None = None) -> BlobArtifactStore:
    hook = {"raw_request_hook": requests} if requests is not None else {}
    service = BlobServiceClient(
        azurite.account_url, credential=AzureNamedKeyCredential(DEV_ACCOUNT, DEV_KEY), **hook
    )
    return BlobArtifactStore(service, container, instance_root="/srv/artifacts")


def sign(azurite: Azurite, container: str, digest: str, now: datetime | None = None) -> str:
    """The URL the compute provider would put in a VM's custom data for this code snapshot."""
    signer = SnapshotSigner(
        azurite.account_url,
        container,
        ttl=timedelta(days=1),
        instance_root="/srv/artifacts",
        account_key=DEV_KEY,
    )
    return asyncio.run(signer.url(SnapshotRef("code", digest), now or datetime.now(UTC)))


@pytest.fixture
def container() -> str:
    return f"t{uuid.uuid4().hex[:20]}"


def model_folder(root: Path, weights: str = "w=1") -> Path:
    folder = root / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.txt").write_text(weights)
    (folder / "sub" / "config.json").write_text('{"layers": 2}')
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"not content")
    return folder


def test_a_snapshot_is_uploaded_once_and_the_same_content_again_uploads_nothing(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    requests = Requests()
    store = make_store(azurite, container, requests)
    source = model_folder(tmp_path / "a")

    first = store.snapshot(source, "models")
    assert requests.puts("snapshots/") == 1
    assert first.path == Path(f"/srv/artifacts/models/{first.content_hash}/model")

    again = store.snapshot(source, "models")
    twin = store.snapshot(model_folder(tmp_path / "b"), "models")  # same content elsewhere
    assert requests.puts("snapshots/") == 1
    assert again == first and twin == first

    (source / "weights.txt").write_text("w=2")
    changed = store.snapshot(source, "models")
    assert changed.content_hash != first.content_hash
    assert requests.puts("snapshots/") == 2


def test_the_content_hash_is_the_local_stores(azurite: Azurite, container: str, tmp_path: Path) -> None:
    source = model_folder(tmp_path)
    local = LocalArtifactStore(Settings(home=tmp_path / "home")).snapshot(source, "code")
    remote = make_store(azurite, container).snapshot(source, "code")
    assert remote.content_hash == local.content_hash == content_hash(source)


def test_the_registry_round_trips_through_the_container(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    store = make_store(azurite, container)
    one = store.create_model("fraud", "1", model_folder(tmp_path / "1", "w=1"), description="first")
    two = store.create_model("fraud", "2", model_folder(tmp_path / "2", "w=2"))
    other = store.create_model("churn", "10", model_folder(tmp_path / "3", "w=3"))

    assert store.show_model("fraud", "1") == one
    assert store.list_models("fraud") == [one, two]
    assert store.list_models() == [other, one, two]
    assert store.resolve_model("azureml:fraud:1") == Path(one.path)
    assert store.resolve_model("azureml:fraud@latest") == Path(two.path)
    with pytest.raises(Conflict, match="fraud:1 already exists"):
        store.create_model("fraud", "1", model_folder(tmp_path / "4", "w=4"))
    with pytest.raises(NotFound, match="fraud:9"):
        store.show_model("fraud", "9")
    with pytest.raises(NotFound, match="model nope is not registered"):
        store.resolve_model("azureml:nope@latest")


def test_of_concurrent_registrations_of_one_version_exactly_one_wins(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    contenders = 6
    sources = [model_folder(tmp_path / str(i), f"w={i}") for i in range(contenders)]
    stores = [make_store(azurite, container) for _ in range(contenders)]
    start = threading.Barrier(contenders)
    won: list[str] = []
    lost: list[str] = []

    def register(i: int) -> None:
        start.wait()
        try:
            model = stores[i].create_model("race", "1", sources[i])
            won.append(model.content_hash)
        except Conflict:
            lost.append(str(i))

    threads = [threading.Thread(target=register, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == contenders - 1
    assert make_store(azurite, container).show_model("race", "1").content_hash == won[0]


def test_a_snapshot_url_downloads_the_snapshot_and_fetch_unpacks_it(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    store = make_store(azurite, container)
    source = model_folder(tmp_path / "src")
    snap = store.snapshot(source, "code")
    url = sign(azurite, container, snap.content_hash)

    with urllib.request.urlopen(url) as response:  # plain HTTP, no SDK, no key
        assert response.status == 200
        assert response.read(2) == b"\x1f\x8b"  # gzip

    dest = tmp_path / "vm" / "code" / snap.content_hash
    unpacked = fetch_snapshot(url, dest, expected_hash=snap.content_hash)
    assert unpacked == dest / "model"
    assert (unpacked / "weights.txt").read_text() == "w=1"
    assert (unpacked / "sub" / "config.json").read_text() == '{"layers": 2}'
    assert not (unpacked / "__pycache__").exists()
    assert content_hash(unpacked) == snap.content_hash
    assert fetch_snapshot(url, dest) == unpacked  # a bootstrap run twice finds it there

    with pytest.raises(SnapshotFetchError, match="content hashes to"):
        fetch_snapshot(url, tmp_path / "vm2", expected_hash="0" * 16)


def test_the_snapshot_url_is_read_only(azurite: Azurite, container: str, tmp_path: Path) -> None:
    store = make_store(azurite, container)
    snap = store.snapshot(model_folder(tmp_path), "code")
    url = sign(azurite, container, snap.content_hash)
    put = urllib.request.Request(url, data=b"evil", method="PUT", headers={"x-ms-blob-type": "BlockBlob"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(put)
    assert refused.value.code == 403


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda url, sign, h: sign(h, past()), id="expired"),
        pytest.param(lambda url, sign, h: url.replace("sig=", "sig=AAAA"), id="garbled_signature"),
        pytest.param(lambda url, sign, h: url.replace("/code/", "/models/"), id="another_blob"),
    ],
)
def test_a_spoiled_snapshot_url_is_refused_without_echoing_its_signature(
    azurite: Azurite, container: str, tmp_path: Path, spoil: Any
) -> None:
    store = make_store(azurite, container)
    snap = store.snapshot(model_folder(tmp_path), "code")
    store.snapshot(model_folder(tmp_path / "m"), "models")
    signer = lambda digest, now=None: sign(azurite, container, digest, now)  # noqa: E731
    bad = spoil(signer(snap.content_hash), signer, snap.content_hash)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad)
    assert refused.value.code == 403
    with pytest.raises(SnapshotFetchError) as failed:
        fetch_snapshot(bad, tmp_path / "vm" / snap.content_hash)
    assert "HTTP 403" in str(failed.value)
    assert "sig=" not in str(failed.value) and "?" not in str(failed.value)
    assert not (tmp_path / "vm" / snap.content_hash).exists()


def past() -> datetime:
    return datetime.now(UTC) - timedelta(days=3)


def test_the_provider_registry_builds_it_from_settings_and_logs_no_key(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        artifacts_provider="azure",
        azure_storage_account_url=azurite.account_url,
        azure_storage_container=container,
        azure_storage_account_key=DEV_KEY,
    )
    store = provider("artifacts", settings)
    signer = SnapshotSigner.from_settings(settings)
    assert signer is not None
    with structlog.testing.capture_logs() as logs:
        snap = store.snapshot(model_folder(tmp_path), "code")
        assert isinstance(store, BlobArtifactStore)
        runtime = DeploymentRuntime(endpoint="ep", deployment="d", code_dir=str(snap.path), spec_hash="s")
        url = asyncio.run(signer.signed_runtime(runtime, datetime.now(UTC))).code_dir
    assert fetch_snapshot(url, tmp_path / "vm").name == "model"
    assert [entry["event"] for entry in logs] == [
        "artifacts.container_created",
        "artifacts.snapshot_uploaded",
        "azure.snapshot_url.signed",
    ]
    signature = url.split("sig=")[1]
    assert DEV_KEY not in repr(logs) and signature not in repr(logs)


def test_code_and_environment_versions_round_trip_apart_from_models(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    store = make_store(azurite, container)
    model = store.create_model("score", "1", model_folder(tmp_path / "m", "w=1"))
    code = store.register_asset(
        "codes",
        RegisteredAsset(name="score", version="1", uri="tidegate://uploads/x"),
        model_folder(tmp_path / "c"),
    )
    environment = store.register_asset(
        "environments", RegisteredAsset(name="score", version="1", conda_file="name: e\n"), None
    )
    assert code.path is not None and code.path.startswith("/srv/artifacts/code/")
    assert code.created_at is not None and code.created_by
    assert store.show_asset("codes", "score", "1") == code
    assert store.show_asset("environments", "score", "1") == environment
    # One name in three kinds: each kind lists only its own.
    assert [m.version for m in store.list_models()] == [model.version]
    assert store.list_assets("codes") == [code] and store.list_assets("environments", "score") == [
        environment
    ]
    with pytest.raises(Conflict, match="environment score:1 already exists"):
        store.register_asset("environments", RegisteredAsset(name="score", version="1", image="x"), None)
    assert store.delete_asset("codes", "score", "1") is True
    assert store.delete_asset("codes", "score", "1") is False
    with pytest.raises(NotFound, match="code score:1 is not registered"):
        store.show_asset("codes", "score", "1")
    assert store.show_model("score", "1") == model
