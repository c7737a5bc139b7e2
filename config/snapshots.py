"""A snapshot's content hash, and fetching one from a URL onto a disk: shared by the artifact
stores (activities/local, activities/azure), which name snapshots by their hash, and a VM's agent
(host/vm.py), which checks what it downloaded against that hash before it runs it."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def content_hash(path: Path) -> str:
    """sha256 over relative names and bytes, so the same content gives the same hash anywhere."""
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(b"F" + path.name.encode() + b"\0")
        digest.update(path.read_bytes())
        return digest.hexdigest()[:16]
    for item in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(item.relative_to(path)).encode() + b"\0")
        digest.update(item.read_bytes())
    return digest.hexdigest()[:16]


class SnapshotFetchError(RuntimeError):
    """A snapshot could not be fetched; the message names the blob, never the signature.
    `status`: the HTTP status the storage service answered with, if it answered."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SnapshotHashMismatch(SnapshotFetchError):
    """The unpacked snapshot does not hash to what it was named for."""


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def fetch_snapshot(url: str, dest: Path, *, expected_hash: str | None = None, timeout: float = 60.0) -> Path:
    """Download a snapshot (a SAS URL) and unpack it into `dest`, once: a VM's bootstrap calls this
    for each artifact, and a second call finds it there. Returns the unpacked item's path. With
    `expected_hash`, the unpacked content must hash to it (the local store's hash)."""
    shown = _without_query(url)
    if dest.is_dir() and (items := [p for p in dest.iterdir() if not p.name.startswith(".")]):
        return items[0]
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".fetch-"))
    try:
        archive = staging / "snapshot.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
        except urllib.error.HTTPError as error:
            raise SnapshotFetchError(
                f"{shown}: HTTP {error.code} {error.reason}", status=error.code
            ) from None
        except urllib.error.URLError as error:
            raise SnapshotFetchError(f"{shown}: {error.reason}") from None
        unpacked = staging / "content"
        with tarfile.open(archive, mode="r:gz") as tar:
            tar.extractall(unpacked, filter="data")  # refuses absolute paths and links outside
        items = list(unpacked.iterdir())
        if len(items) != 1:
            raise SnapshotFetchError(f"{shown}: expected one item in the snapshot, found {len(items)}")
        if expected_hash is not None and (found := content_hash(items[0])) != expected_hash:
            raise SnapshotHashMismatch(f"{shown}: content hashes to {found}, expected {expected_hash}")
        try:
            os.rename(unpacked, dest)
        except OSError:  # another fetch of the same snapshot finished first: same content
            pass
        return dest / items[0].name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
