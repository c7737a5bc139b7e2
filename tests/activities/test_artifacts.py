"""The local artifact store: one copy per content, and registered models by name and version."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.local.artifacts import LocalArtifactStore
from config.contract.errors import BadRequest, Conflict, NotFound
from config.settings import Settings


def folder(root: Path, text: str) -> Path:
    root.mkdir(parents=True)
    (root / "score.py").write_text(text)
    return root


def test_the_same_content_is_copied_once(tmp_path: Path) -> None:
    store = LocalArtifactStore(Settings(home=tmp_path / "home"))
    first = store.snapshot(folder(tmp_path / "a" / "code", "x = 1"), "code")
    same = store.snapshot(folder(tmp_path / "b" / "code", "x = 1"), "code")
    other = store.snapshot(folder(tmp_path / "c" / "code", "x = 2"), "code")
    assert same == first
    assert other.content_hash != first.content_hash
    assert first.path == tmp_path / "home" / "artifacts" / "code" / first.content_hash / "code"
    assert (first.path / "score.py").read_text() == "x = 1"


def test_the_same_content_under_another_folder_name_gets_a_copy_of_that_name(tmp_path: Path) -> None:
    # The CI example's repository calls its code folder src/; another project, code/.
    store = LocalArtifactStore(Settings(home=tmp_path / "home"))
    code = store.snapshot(folder(tmp_path / "a" / "code", "x = 1"), "code")
    src = store.snapshot(folder(tmp_path / "b" / "src", "x = 1"), "code")
    assert src.content_hash == code.content_hash
    assert src.path.name == "src" and (src.path / "score.py").read_text() == "x = 1"
    assert (code.path / "score.py").read_text() == "x = 1"
    assert store.snapshot(tmp_path / "b" / "src", "code") == src


def test_a_registered_model_resolves_by_version_and_latest(tmp_path: Path) -> None:
    store = LocalArtifactStore(Settings(home=tmp_path / "home"))
    store.create_model("diabetes", "1", folder(tmp_path / "v1" / "model", "one"))
    store.create_model("diabetes", "2", folder(tmp_path / "v2" / "model", "two"))
    assert (store.resolve_model("azureml:diabetes:1") / "score.py").read_text() == "one"
    assert (store.resolve_model("azureml:diabetes@latest") / "score.py").read_text() == "two"
    assert [m.version for m in store.list_models("diabetes")] == ["1", "2"]


@pytest.mark.parametrize(
    ("reference", "error"),
    [("azureml:missing:1", NotFound), ("azureml:../x:1", BadRequest), ("not-a-reference", BadRequest)],
    ids=["unknown_model", "name_leaving_the_registry", "not_a_reference"],
)
def test_a_bad_model_reference_is_refused(tmp_path: Path, reference: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        LocalArtifactStore(Settings(home=tmp_path)).resolve_model(reference)


def test_a_version_is_registered_once(tmp_path: Path) -> None:
    store = LocalArtifactStore(Settings(home=tmp_path / "home"))
    store.create_model("m", "1", folder(tmp_path / "m", "one"))
    with pytest.raises(Conflict):
        store.create_model("m", "1", tmp_path / "m")
