"""A VM's agent (host.vm) fetching its snapshots with the SAS URLs its custom data names: from
Azurite (a real process, real HTTP), the content checked against the hash the blob is named for,
and a refused or tampered snapshot a boot failure that says why. No fake in between."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient

from activities.azure.artifacts import BlobArtifactStore, snapshot_blob_name
from activities.azure.snapshot_sas import SnapshotRef, SnapshotSigner
from activities.local.artifacts import content_hash
from config.azure_vm import VmBoot
from config.host_api import DeploymentRuntime
from host.vm import BootFailed, fetch_blob_snapshot, local_runtime, named_snapshot, refusal_reason
from tests.support.azurite import DEV_ACCOUNT, DEV_KEY, Azurite, node, run_azurite
from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TTL = timedelta(days=1)
H = "0123456789abcdef"
URL = (
    f"https://acct.blob.core.windows.net/tidegate/snapshots/code/{H}.tar.gz"
    "?st=2026-11-29T11%3A55%3A00Z&se=2026-11-30T12%3A00%3A00Z&sp=r&sv=2026-02-06&sr=b&sig=c2VjcmV0"
)


# ---- what a snapshot URL says (pure) ------------------------------------------------------
def test_a_snapshot_url_names_its_kind_hash_and_expiry_and_shows_no_signature() -> None:
    named = named_snapshot(URL)
    assert (named.kind, named.content_hash) == ("code", H)
    assert named.expires == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert named.shown == f"https://acct.blob.core.windows.net/tidegate/snapshots/code/{H}.tar.gz"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(
            "https://acct.blob.core.windows.net/tidegate/registry/m/1/model.json?sig=x", id="not_a_snapshot"
        ),
        pytest.param(
            f"https://acct.blob.core.windows.net/tidegate/snapshots/code/{H[:8]}.tar.gz", id="short_hash"
        ),
        pytest.param(
            f"https://acct.blob.core.windows.net/tidegate/snapshots/envs/{H}.tar.gz", id="unknown_kind"
        ),
    ],
)
def test_a_url_that_names_no_snapshot_fails_the_boot_without_its_query(url: str) -> None:
    with pytest.raises(BootFailed, match="not a snapshot blob") as failed:
        named_snapshot(url)
    assert "sig=" not in str(failed.value)


@pytest.mark.parametrize(
    ("status", "now", "says"),
    [
        pytest.param(
            403,
            datetime(2026, 12, 1, tzinfo=UTC),
            "its SAS expired at 2026-11-30T12:00:00+00:00",
            id="expired",
        ),
        pytest.param(
            403, datetime(2026, 11, 30, tzinfo=UTC), "refused before its expiry (revoked", id="revoked"
        ),
        pytest.param(404, datetime(2026, 11, 30, tzinfo=UTC), "HTTP 404", id="missing"),
    ],
)
def test_a_refusal_says_whether_the_sas_expired(status: int, now: datetime, says: str) -> None:
    assert says in refusal_reason(named_snapshot(URL), status, now)


def test_a_storage_account_that_does_not_answer_fails_the_boot_with_the_reason(tmp_path: Path) -> None:
    closed = (
        f"http://127.0.0.1:{free_port()}/devstoreaccount1/c/snapshots/models/{H}.tar.gz?se=x&sig=c2VjcmV0"
    )
    with pytest.raises(BootFailed) as failed:
        fetch_blob_snapshot(closed, tmp_path)
    message = str(failed.value)
    assert (
        message.startswith("cannot fetch models snapshot http://127.0.0.1:")
        and "Connection refused" in message
    )
    assert "sig=" not in message


# ---- against Azurite ----------------------------------------------------------------------
needs_azurite = pytest.mark.skipif(node() is None, reason="node is not installed, so Azurite cannot run")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    if node() is None:
        pytest.skip("node is not installed, so Azurite cannot run")
    with run_azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


@pytest.fixture
def container() -> str:
    return f"vm{uuid.uuid4().hex[:20]}"


def store(azurite: Azurite, container: str) -> BlobArtifactStore:
    service = BlobServiceClient(azurite.account_url, credential=AzureNamedKeyCredential(DEV_ACCOUNT, DEV_KEY))
    return BlobArtifactStore(service, container, instance_root="/srv/artifacts")


def signer(azurite: Azurite, container: str) -> SnapshotSigner:
    return SnapshotSigner(
        azurite.account_url, container, ttl=TTL, instance_root="/srv/artifacts", account_key=DEV_KEY
    )


def code_folder(root: Path, answer: str = "42") -> Path:
    folder = root / "src"
    folder.mkdir(parents=True)
    (folder / "score.py").write_text(f"def run(raw):\n    return {answer}\n")
    return folder


@needs_azurite
async def test_vm_fetches_code_and_model_with_sas_and_checks_their_hashes(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    blobs = store(azurite, container)
    code = blobs.snapshot(code_folder(tmp_path), "code")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.txt").write_text("2.5")
    model = blobs.snapshot(tmp_path / "model", "models")
    runtime = DeploymentRuntime(
        endpoint="ep",
        deployment="blue",
        code_dir=str(code.path),
        model_dir=str(model.path.parent),
        spec_hash="s",
    )
    signed = await signer(azurite, container).signed_runtime(runtime, datetime.now(UTC))
    assert signed.code_dir.startswith(
        f"{azurite.account_url}/{container}/snapshots/code/{code.content_hash}.tar.gz?"
    )
    assert signed.model_dir is not None and "sig=" in signed.model_dir and "sp=r" in signed.model_dir

    disk = tmp_path / "vm-disk"
    fetched = local_runtime(VmBoot(runtime=signed, port=5001), disk)
    assert Path(fetched.code_dir) == disk / "artifacts" / "code" / code.content_hash / "src"
    assert content_hash(Path(fetched.code_dir)) == code.content_hash
    assert fetched.model_dir == str(disk / "artifacts" / "models" / model.content_hash)
    assert (Path(fetched.model_dir) / "model" / "weights.txt").read_text() == "2.5"


def tarball_of(folder: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return out.getvalue()


@needs_azurite
async def test_vm_refuses_a_snapshot_whose_content_is_not_what_its_name_says(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    blobs = store(azurite, container)
    honest = blobs.snapshot(code_folder(tmp_path / "a", "42"), "code")
    # Someone with write access swaps the blob's content for other code under the same name.
    other = code_folder(tmp_path / "b", "__import__('os').system('echo pwned')")
    service = BlobServiceClient(azurite.account_url, credential=AzureNamedKeyCredential(DEV_ACCOUNT, DEV_KEY))
    service.get_blob_client(container, snapshot_blob_name("code", honest.content_hash)).upload_blob(
        tarball_of(other), overwrite=True
    )
    url = await signer(azurite, container).url(SnapshotRef("code", honest.content_hash), datetime.now(UTC))
    with pytest.raises(BootFailed) as failed:
        fetch_blob_snapshot(url, tmp_path / "disk")
    message = str(failed.value)
    assert f"content hashes to {content_hash(other)}, expected {honest.content_hash}" in message
    assert "sig=" not in message
    assert not (tmp_path / "disk" / "artifacts" / "code" / honest.content_hash).exists()


@needs_azurite
async def test_vm_boot_with_an_expired_sas_exits_saying_it_expired(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    """The agent as the custom data runs it: a process of its own, its exit code and its log."""
    blobs = store(azurite, container)
    code = blobs.snapshot(code_folder(tmp_path), "code")
    long_ago = datetime.now(UTC) - 3 * TTL
    runtime = DeploymentRuntime(endpoint="ep", deployment="blue", code_dir=str(code.path), spec_hash="s")
    signed = await signer(azurite, container).signed_runtime(runtime, long_ago)
    boot = tmp_path / "boot.json"
    boot.write_text(VmBoot(runtime=signed, port=5001).model_dump_json())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "host.vm",
            "--boot",
            str(boot),
            "--root",
            str(tmp_path / "disk"),
            "--address",
            "127.0.0.1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "vm.boot_failed" in output
    assert f"cannot fetch code snapshot {azurite.account_url}/{container}/snapshots/code/" in output
    assert "HTTP 403: its SAS expired at" in output
    assert "sig=" not in output and DEV_KEY not in output
    json.loads(boot.read_text())  # the boot description is left for the operator to read
