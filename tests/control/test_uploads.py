"""Unpacking an uploaded archive: what it keeps, what it refuses (naming the member at fault),
and that nothing of a refused archive stays behind."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from control.uploads import UploadRefused, resolve_upload, unpack


def tar_of(members: list[tuple[str, bytes | None, bytes]], *, mode: str = "w:gz") -> bytes:
    """(name, file content or None for a symbolic link, link target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, content, target in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.linkname = tarfile.SYMTYPE, target.decode()
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def zip_with_link(name: str, target: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo(name)
        info.external_attr = (0o120777) << 16  # S_IFLNK: how zip -y stores a symbolic link
        archive.writestr(info, target)
    return buffer.getvalue()


def given(tmp_path: Path, data: bytes) -> Path:
    archive = tmp_path / "archive"
    archive.write_bytes(data)
    return archive


def test_a_folder_in_a_tar_gz_is_named_by_its_own_uri(tmp_path: Path) -> None:
    data = tar_of([("model/weights.bin", b"w" * 10, b""), ("./model/meta/info.txt", b"hi", b"")])
    done = unpack(given(tmp_path, data), tmp_path / "uploads", max_bytes=1000)
    assert done.uri == f"tidegate://uploads/{done.content_hash}/model"
    assert (done.entries, done.bytes) == (["model"], 12)
    found = resolve_upload(done.uri, tmp_path / "uploads", target="properties.modelUri")
    assert (found / "meta" / "info.txt").read_text() == "hi"


def test_the_same_content_as_tar_or_zip_is_one_upload(tmp_path: Path) -> None:
    files = {"code/score.py": b"def run(x): return x\n", "code/util.py": b"X = 1\n"}
    tarred = unpack(
        given(tmp_path, tar_of([(n, c, b"") for n, c in files.items()], mode="w")),
        tmp_path / "u",
        max_bytes=99,
    )
    zipped = unpack(given(tmp_path, zip_of(files)), tmp_path / "u", max_bytes=99)
    assert tarred == zipped
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == [tarred.content_hash]


def test_several_top_level_entries_are_named_by_the_uploads_uri(tmp_path: Path) -> None:
    done = unpack(given(tmp_path, zip_of({"a.txt": b"a", "b/c.txt": b"c"})), tmp_path / "u", max_bytes=9)
    assert done.uri == f"tidegate://uploads/{done.content_hash}" and done.entries == ["a.txt", "b"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (tar_of([("../evil.py", b"x", b"")]), "'../evil.py': '..' would leave"),
        (tar_of([("model/../../evil.py", b"x", b"")]), "'..' would leave"),
        (tar_of([("/etc/evil", b"x", b"")]), "'/etc/evil': an absolute path"),
        (tar_of([("model/link", None, b"/etc/passwd")]), "'model/link': links and special files"),
        (zip_of({"..\\evil.py": b"x"}), "'..' would leave"),
        (zip_with_link("code/keys", "/root/.tidegate/secrets"), "'code/keys': links and special files"),
        (zip_of({"C:/evil.py": b"x"}), "an absolute path"),
        (b"just some bytes, not an archive", "not a tar, tar.gz or zip archive"),
        (tar_of([]), "holds no files"),
    ],
    ids=[
        "dot_dot",
        "dot_dot_inside",
        "absolute",
        "symbolic_link",
        "zip_backslash_dot_dot",
        "zip_symbolic_link",
        "zip_drive_letter",
        "not_an_archive",
        "empty",
    ],
)
def test_an_unsafe_or_unreadable_archive_is_refused_and_nothing_is_kept(
    tmp_path: Path, data: bytes, message: str
) -> None:
    with pytest.raises(UploadRefused, match=message.replace("(", r"\(")) as refused:
        unpack(given(tmp_path, data), tmp_path / "uploads", max_bytes=1000)
    assert refused.value.target == "body" and not refused.value.too_large
    assert list((tmp_path / "uploads").iterdir()) == []
    assert not (tmp_path / "outside").exists() and not (tmp_path / "evil.py").exists()


def test_an_archive_unpacking_past_the_limit_is_refused_as_too_large(tmp_path: Path) -> None:
    # 3 MB of zeros compress to a few KB: the limit is on what comes out, not what was sent.
    data = tar_of([("model/zeros.bin", b"\0" * 3_000_000, b"")])
    assert len(data) < 10_000
    with pytest.raises(UploadRefused, match="more than 1000000 bytes") as refused:
        unpack(given(tmp_path, data), tmp_path / "uploads", max_bytes=1_000_000)
    assert refused.value.too_large
    assert list((tmp_path / "uploads").iterdir()) == []


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("tidegate://uploads/0123456789abcdef", "no such upload"),
        ("tidegate://uploads/not-a-hash", "not an upload's URI"),
        ("tidegate://uploads/{hash}/../../etc", "may not leave it"),
        ("tidegate://uploads/{hash}/missing", "no such upload"),
    ],
    ids=["unknown_hash", "not_a_hash", "leaving_the_upload", "missing_path_inside"],
)
def test_a_uri_naming_no_upload_is_refused_at_its_field(tmp_path: Path, uri: str, message: str) -> None:
    done = unpack(given(tmp_path, zip_of({"model/m.bin": b"m"})), tmp_path / "u", max_bytes=9)
    with pytest.raises(UploadRefused, match=message) as refused:
        resolve_upload(uri.format(hash=done.content_hash), tmp_path / "u", target="properties.codeUri")
    assert refused.value.target == "properties.codeUri"
