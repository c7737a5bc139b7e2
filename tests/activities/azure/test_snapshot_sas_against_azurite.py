"""The snapshot URLs the compute provider signs, against Azurite: with the account key (plain
HTTP), and with a user delegation key of the worker's identity (Azurite over HTTPS with
`--oauth basic`, which checks a bearer token's issuer, audience and lifetime but not its
signature: the token here is made up, so Entra ID itself is not tested)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient
from temporalio.exceptions import ApplicationError

from activities.azure.artifacts import BlobArtifactStore
from activities.azure.credentials import GivenTokenCredential
from activities.azure.snapshot_sas import SnapshotRef, SnapshotSigner, snapshot_ref
from activities.local.artifacts import content_hash
from decisions.snapshot_urls import sas_window
from host.vm import fetch_blob_snapshot
from tests.support.azurite import DEV_ACCOUNT, DEV_KEY, Azurite, node, run_azurite

TTL = timedelta(days=1)
ROOT = "/var/lib/tidegate/artifacts"


# ---- which blob an instance path names (pure) ----------------------------------------------
@pytest.mark.parametrize(
    ("path", "ref"),
    [
        pytest.param(
            f"{ROOT}/code/0123456789abcdef/src", SnapshotRef("code", "0123456789abcdef"), id="code_item"
        ),
        pytest.param(
            f"{ROOT}/models/0123456789abcdef", SnapshotRef("models", "0123456789abcdef"), id="model_dir"
        ),
        pytest.param("/home/me/.tidegate/artifacts/code/0123456789abcdef/src", None, id="a_local_snapshot"),
        pytest.param(f"{ROOT}/envs/0123456789abcdef", None, id="unknown_kind"),
        pytest.param(f"{ROOT}/code/../../etc/src", None, id="not_a_hash"),
        pytest.param(f"{ROOT}/code", None, id="no_hash"),
    ],
)
def test_an_instance_path_names_its_snapshot_blob_or_nothing(path: str, ref: SnapshotRef | None) -> None:
    assert snapshot_ref(path, ROOT) == ref


# ---- Azurite -------------------------------------------------------------------------------
def _needs_node() -> None:
    if node() is None:
        pytest.skip("node is not installed, so Azurite cannot run")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    _needs_node()
    with run_azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    root = tmp_path_factory.mktemp("azurite-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    return root / "ca.pem", root / "cert.pem", root / "key.pem"


@pytest.fixture(scope="module")
def azurite_https(
    tmp_path_factory: pytest.TempPathFactory, tls: tuple[Path, Path, Path]
) -> Iterator[Azurite]:
    _needs_node()
    with run_azurite(tmp_path_factory.mktemp("azurite-https"), tls=(tls[1], tls[2])) as running:
        assert running.url.startswith("https://")
        yield running


def upload(azurite: Azurite, container: str, tmp_path: Path, ca: Path | None = None) -> SnapshotRef:
    options = {"connection_verify": str(ca)} if ca else {}
    service = BlobServiceClient(
        azurite.account_url, credential=AzureNamedKeyCredential(DEV_ACCOUNT, DEV_KEY), **options
    )
    source = tmp_path / "src"
    source.mkdir()
    (source / "score.py").write_text("def run(raw):\n    return 1\n")
    snap = BlobArtifactStore(service, container).snapshot(source, "code")
    return SnapshotRef("code", snap.content_hash)


def token(*, issuer: str = "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/") -> str:
    """A bearer token shaped as Entra ID's for storage (unsigned: Azurite's basic level)."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    now = int(time.time())
    claims = {
        "aud": "https://storage.azure.com",
        "iss": issuer,
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        "oid": "11059fcc-5514-4800-b5f8-49808b9cfab6",
        "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    }
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.fixture
def container() -> str:
    return f"s{uuid.uuid4().hex[:20]}"


async def test_account_key_signs_the_same_url_within_a_half_life_and_a_new_one_after(
    azurite: Azurite, container: str, tmp_path: Path
) -> None:
    ref = upload(azurite, container, tmp_path)
    signer = SnapshotSigner(azurite.account_url, container, ttl=TTL, instance_root=ROOT, account_key=DEV_KEY)
    now = datetime.now(UTC)
    base = sas_window(now, TTL).renew_at - TTL / 2
    early, late = await signer.url(ref, base), await signer.url(ref, base + TTL / 2 - timedelta(seconds=1))
    assert early == late
    previous = await signer.url(ref, base - timedelta(seconds=1))
    assert previous != early
    for url in (early, previous):  # both valid now: the older has under half its life left
        assert content_hash(fetch_blob_snapshot(url, tmp_path / "disk" / str(hash(url)))) == ref.content_hash


def delegation_signer(
    azurite: Azurite, container: str, ca: Path, seen: list[str] | None = None
) -> SnapshotSigner:
    options: dict[str, object] = {"connection_verify": str(ca)}
    if seen is not None:
        options["raw_request_hook"] = lambda request: seen.append(request.http_request.url)
    return SnapshotSigner(
        azurite.account_url,
        container,
        ttl=TTL,
        instance_root=ROOT,
        credential=GivenTokenCredential(token()),
        client_options=options,
    )


async def test_worker_identity_signs_read_only_urls_with_one_delegation_key_per_window_against_https_azurite(
    azurite_https: Azurite, tls: tuple[Path, Path, Path], container: str, tmp_path: Path
) -> None:
    ref = upload(azurite_https, container, tmp_path, tls[0])
    seen: list[str] = []
    signer = delegation_signer(azurite_https, container, tls[0], seen)
    try:
        now = datetime.now(UTC)
        url = await signer.url(ref, now)
        assert await signer.url(ref, now) == url
        window = sas_window(now, TTL)
    finally:
        await signer.close()
    assert signer.signs_with == "user_delegation_key"
    assert sum("comp=userdelegationkey" in u for u in seen) == 1  # one key for the window
    query = parse_qs(urlsplit(url).query)
    assert query["skoid"] == ["11059fcc-5514-4800-b5f8-49808b9cfab6"]
    assert query["sp"] == ["r"] and query["sr"] == ["b"] and query["spr"] == ["https"]
    assert query["se"] == query["ske"] == [window.expiry.strftime("%Y-%m-%dT%H:%M:%SZ")]
    assert DEV_KEY not in url


@pytest.mark.xfail(
    strict=True,
    reason="Azurite 3.35 checks a user delegation SAS against API 2025-11-05's string-to-sign; "
    "azure-storage-blob 12.31 signs 2026-10-06's, which has two more lines (signed request headers "
    "and query parameters), so Azurite answers 403. Untested end to end until Azurite catches up.",
)
async def test_a_vm_fetches_with_a_user_delegation_sas_against_https_azurite(
    azurite_https: Azurite,
    tls: tuple[Path, Path, Path],
    container: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = upload(azurite_https, container, tmp_path, tls[0])
    signer = delegation_signer(azurite_https, container, tls[0])
    try:
        url = await signer.url(ref, datetime.now(UTC))
    finally:
        await signer.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[0]))  # the VM trusts the test CA as it would Azure's
    assert content_hash(fetch_blob_snapshot(url, tmp_path / "disk")) == ref.content_hash


async def test_a_refused_user_delegation_key_is_a_non_retryable_error_naming_the_roles_against_https_azurite(
    azurite_https: Azurite, tls: tuple[Path, Path, Path], container: str, tmp_path: Path
) -> None:
    ref = upload(azurite_https, container, tmp_path, tls[0])
    signer = SnapshotSigner(
        azurite_https.account_url,
        container,
        ttl=TTL,
        instance_root=ROOT,
        credential=GivenTokenCredential(token(issuer="https://login.example.org/")),
        client_options={"connection_verify": str(tls[0])},
    )
    try:
        with pytest.raises(ApplicationError) as refused:
            await signer.url(ref, datetime.now(UTC))
    finally:
        await signer.close()
    assert refused.value.non_retryable and refused.value.type == "SnapshotSigningFailed"
    assert "Storage Blob Data Reader" in str(refused.value)
