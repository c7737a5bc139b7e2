"""Archives uploaded to the REST API: unpacked safely into `$TIDEGATE_HOME/uploads/<hash>/`,
content-hashed as snapshots are, and named by a URI a model or code version then registers
(``tidegate://uploads/<hash>`` or a path inside it, as Azure's datastore paths name a folder).

Unpacking refuses what could leave the folder or fill the disk: absolute names, ``..``, links
and device files, more than the byte limit, more than `MAX_FILES` entries. A refusal names the
archive member at fault; nothing of a refused archive is kept.
"""

from __future__ import annotations

import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from activities.local.artifacts import content_hash
from config.contract.errors import BadRequest

SCHEME = "tidegate://uploads/"
MAX_FILES = 100_000
_CHUNK = 1024 * 1024
_HASH = re.compile(r"^[0-9a-f]{16}$")


class UploadRefused(BadRequest):
    """An archive that cannot be taken; `target` is what the caller should look at."""

    def __init__(self, message: str, target: str = "body", *, too_large: bool = False) -> None:
        super().__init__(message)
        self.target = target
        self.too_large = too_large


@dataclass(frozen=True)
class Upload:
    content_hash: str
    uri: str  # the single top-level entry when there is one, else the whole upload
    entries: list[str]
    files: int
    bytes: int


def _member_path(name: str) -> PurePosixPath:
    """An archive member's name as a relative path inside the upload, or a refusal."""
    cleaned = name.replace("\\", "/")
    path = PurePosixPath(cleaned)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", cleaned):
        raise UploadRefused(f"archive member {name!r}: an absolute path")
    parts = [p for p in path.parts if p not in ("", ".")]
    if ".." in parts:
        raise UploadRefused(f"archive member {name!r}: '..' would leave the upload's folder")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class _Budget:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes, self.files = max_bytes, 0, 0

    def entry(self, name: str) -> None:
        self.files += 1
        if self.files > MAX_FILES:
            raise UploadRefused(f"the archive has more than {MAX_FILES} entries (at {name!r})")

    def take(self, count: int, name: str) -> None:
        self.bytes += count
        if self.bytes > self.max_bytes:
            raise UploadRefused(
                f"the archive unpacks to more than {self.max_bytes} bytes (at {name!r}; "
                "TIDEGATE_API_UPLOAD_MAX_BYTES)",
                too_large=True,
            )


def _write(source: IO[bytes], target: Path, name: str, budget: _Budget) -> None:
    if target.exists():
        raise UploadRefused(f"archive member {name!r}: appears twice")
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("xb") as out:
        while chunk := source.read(_CHUNK):
            budget.take(len(chunk), name)
            out.write(chunk)


def _unpack_tar(archive: Path, into: Path, budget: _Budget) -> None:
    try:
        tar = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UploadRefused(f"not a tar, tar.gz or zip archive ({err})") from None
    with tar:
        try:
            for member in tar:
                budget.entry(member.name)
                path = _member_path(member.name)
                if member.isdir():
                    (into / path).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise UploadRefused(
                        f"archive member {member.name!r}: links and special files are not taken"
                    )
                if path == PurePosixPath("."):
                    raise UploadRefused(f"archive member {member.name!r}: a file with no name")
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has content
                _write(source, into / path, member.name, budget)
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise UploadRefused(f"the archive is damaged ({err})") from None


def _unpack_zip(archive: Path, into: Path, budget: _Budget) -> None:
    try:
        opened = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise UploadRefused(f"not a valid zip archive ({err})") from None
    with opened:
        try:
            for info in opened.infolist():
                budget.entry(info.filename)
                path = _member_path(info.filename)
                file_type = stat.S_IFMT(info.external_attr >> 16)  # 0: permissions only
                if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
                    raise UploadRefused(
                        f"archive member {info.filename!r}: links and special files are not taken"
                    )
                if info.is_dir():
                    (into / path).mkdir(parents=True, exist_ok=True)
                    continue
                if path == PurePosixPath("."):
                    raise UploadRefused(f"archive member {info.filename!r}: a file with no name")
                with opened.open(info) as source:
                    _write(source, into / path, info.filename, budget)
        except (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error) as err:
            raise UploadRefused(f"the archive is damaged ({err})") from None


def unpack(archive: Path, root: Path, *, max_bytes: int) -> Upload:
    """Unpack `archive` (tar, tar.gz/bz2/xz or zip, told apart by content) into `root/<hash>`;
    the same content twice is kept once."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
    try:
        budget = _Budget(max_bytes)
        try:
            if zipfile.is_zipfile(archive):
                _unpack_zip(archive, staging, budget)
            else:
                _unpack_tar(archive, staging, budget)
        except (FileExistsError, NotADirectoryError) as err:  # a name both a file and a folder
            raise UploadRefused(f"the archive names {Path(err.filename or '').name!r} twice") from None
        entries = sorted(p.name for p in staging.iterdir())
        if not entries:
            raise UploadRefused("the archive holds no files")
        digest = content_hash(staging)
        final = root / digest
        if not final.exists():
            try:
                staging.rename(final)
            except OSError:  # the same content arrived meanwhile: keep that copy
                pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    uri = SCHEME + digest + (f"/{entries[0]}" if len(entries) == 1 else "")
    return Upload(content_hash=digest, uri=uri, entries=entries, files=budget.files, bytes=budget.bytes)


def is_upload_uri(value: str) -> bool:
    return value.startswith(SCHEME)


def resolve_upload(uri: str, root: Path, *, target: str) -> Path:
    """The folder or file an upload URI names; a refusal at `target` when it names nothing here."""
    rest = uri.removeprefix(SCHEME)
    digest, _, inside = rest.partition("/")
    if not _HASH.match(digest):
        raise UploadRefused(f"{uri!r}: not an upload's URI (tidegate://uploads/<hash>[/path])", target)
    try:
        relative = _member_path(inside) if inside else PurePosixPath(".")
    except UploadRefused:
        raise UploadRefused(f"{uri!r}: the path inside the upload may not leave it", target) from None
    found = root / digest / relative
    if not (root / digest).is_dir() or not found.exists():
        raise UploadRefused(f"{uri!r}: no such upload on this API (POST .../uploads first)", target)
    return found
