import json
import shutil
from pathlib import Path

import pytest
from sklearn.linear_model import LinearRegression

from mlscale.service.artifacts.manifest import ARTIFACT, MANIFEST, TensorSpec
from mlscale.service.artifacts.store import ModelStore, sha256_of
from mlscale.service.errors import ModelNotFound, StoreError

IO = {
    "inputs": [TensorSpec(name="input-0", datatype="FP64", shape=[-1, 1])],
    "outputs": [TensorSpec(name="predict", datatype="FP64", shape=[-1])],
    "metrics": {"r2": 1.0},
}


def fitted() -> LinearRegression:
    return LinearRegression().fit([[0.0], [1.0]], [1.0, 3.0])


def test_write_then_load_roundtrip(tmp_path: Path):
    store = ModelStore(tmp_path)
    manifest = store.write("m", "1", fitted(), **IO)
    assert manifest.sha256 == sha256_of(tmp_path / "m" / "1" / ARTIFACT)
    loaded_manifest, estimator = store.load("m", "1")
    assert loaded_manifest == manifest
    assert estimator.predict([[2.0]])[0] == pytest.approx(5.0)
    on_disk = json.loads((tmp_path / "m" / "1" / MANIFEST).read_text())
    for key in ("sklearn_version", "numpy_version", "python_version", "created", "metrics"):
        assert key in on_disk


def test_existing_version_is_refused_and_left_intact(tmp_path: Path):
    store = ModelStore(tmp_path)
    store.write("m", "1", fitted(), **IO)
    before = (tmp_path / "m" / "1" / ARTIFACT).read_bytes()
    with pytest.raises(StoreError, match="already exists"):
        store.write("m", "1", LinearRegression().fit([[0.0], [1.0]], [0.0, 0.0]), **IO)
    assert (tmp_path / "m" / "1" / ARTIFACT).read_bytes() == before
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["1"]  # no staging left behind


def test_half_written_version_is_invisible(tmp_path: Path):
    store = ModelStore(tmp_path)
    store.write("m", "1", fitted(), **IO)
    # What a crash mid-write leaves: a staging folder, and a folder without its manifest.
    staging = tmp_path / "m" / ".2-abc123"
    staging.mkdir()
    (staging / ARTIFACT).write_bytes(b"partial")
    (tmp_path / "m" / "3").mkdir()
    assert store.versions("m") == ["1"]
    assert store.resolve("m", "latest") == "1"
    assert store.next_version("m") == "2"


def test_versions_sort_numerically(tmp_path: Path):
    store = ModelStore(tmp_path)
    for v in ("2", "10", "1"):
        store.write("m", v, fitted(), **IO)
    assert store.versions("m") == ["1", "2", "10"]
    assert store.resolve("m", "latest") == "10"


def test_tampered_artifact_is_refused(tmp_path: Path):
    store = ModelStore(tmp_path)
    store.write("m", "1", fitted(), **IO)
    artifact = tmp_path / "m" / "1" / ARTIFACT
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    with pytest.raises(StoreError, match="does not match"):
        store.load("m", "1")


def test_other_sklearn_version_is_refused(tmp_path: Path):
    store = ModelStore(tmp_path)
    store.write("m", "1", fitted(), **IO)
    path = tmp_path / "m" / "1" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["sklearn_version"] = "0.24.2"
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"trained with scikit-learn 0\.24\.2"):
        store.load("m", "1")


def test_missing_model_and_version_name_what_exists(tmp_path: Path, model_dir: Path):
    store = ModelStore(tmp_path / "copy")
    shutil.copytree(model_dir, store.root)
    with pytest.raises(ModelNotFound, match="not in the store"):
        store.resolve("nope", "latest")
    with pytest.raises(ModelNotFound, match="the store has 1, 2"):
        store.resolve("iris", "9")
    assert store.models() == ["iris", "linear", "multilinear"]
