"""The local artifact store: one copy per content, and registered models by name and version."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from activities.artifacts import RegisteredAsset
from activities.local.artifacts import LocalArtifactStore, resolve_reference
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


def test_code_and_environment_versions_live_beside_models_without_mixing(tmp_path: Path) -> None:
    store = LocalArtifactStore(Settings(home=tmp_path / "home"))
    store.create_model("score", "1", folder(tmp_path / "m" / "model", "weights"))
    code = store.register_asset(
        "codes", RegisteredAsset(name="score", version="1"), folder(tmp_path / "c" / "code", "def run(): ...")
    )
    environment = store.register_asset(
        "environments", RegisteredAsset(name="score", version="2", conda_file="name: e\n"), None
    )
    assert code.path is not None and (Path(code.path) / "score.py").read_text() == "def run(): ..."
    assert code.created_at is not None and code.created_by
    assert environment.path is None and environment.content_hash is None
    assert [m.name for m in store.list_models()] == ["score"]
    assert store.list_assets("codes") == [code]
    assert store.list_assets("environments", "score") == [environment]
    assert resolve_reference(store, "azureml:score@latest", "environments") == environment
    assert store.delete_asset("codes", "score", "1") and not store.delete_asset("codes", "score", "1")
    with pytest.raises(NotFound, match="code score:1 is not registered"):
        store.show_asset("codes", "score", "1")
    assert store.show_model("score", "1").name == "score"


def test_of_two_concurrent_registrations_of_one_version_exactly_one_wins(tmp_path: Path) -> None:
    store = LocalArtifactStore(Settings(home=tmp_path / "home"))
    bodies = [RegisteredAsset(name="env", version="1", conda_file=f"name: e{i}\n") for i in range(8)]

    def register(asset: RegisteredAsset) -> str:
        try:
            store.register_asset("environments", asset, None)
        except Conflict:
            return "conflict"
        return "won"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(register, bodies))
    assert sorted(outcomes) == ["conflict"] * 7 + ["won"]
    kept = store.show_asset("environments", "env", "1")
    assert kept.conda_file == bodies[outcomes.index("won")].conda_file
    assert [p.name for p in (tmp_path / "home" / "models" / ".environments" / "env" / "1").iterdir()] == [
        "environment.json"
    ]
