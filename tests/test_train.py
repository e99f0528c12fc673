from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlscale.cli import app
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.artifacts.train import train_version
from mlscale.service.errors import StoreError


def test_examples_have_good_holdout_metrics(model_dir: Path):
    store = ModelStore(model_dir)
    for version in ("1", "2"):
        assert store.manifest("linear", version).metrics["r2"] > 0.99
        assert store.manifest("multilinear", version).metrics["r2"] > 0.95
        assert store.manifest("iris", version).metrics["accuracy"] > 0.9
    iris = store.manifest("iris", "1")
    assert iris.labels == ["setosa", "versicolor", "virginica"]
    assert [o.name for o in iris.outputs] == ["predict", "predict_proba"]


def test_linear_learns_the_seed_relation(model_dir: Path):
    _, model = ModelStore(model_dir).load("linear", "1")
    assert model.coef_[0] == pytest.approx(2.0, abs=0.05)
    assert model.intercept_ == pytest.approx(1.0, abs=0.2)


def test_training_an_existing_version_is_refused(tmp_path: Path):
    store = ModelStore(tmp_path)
    train_version(store, "linear", "1")
    with pytest.raises(StoreError, match="already exists"):
        train_version(store, "linear", "1")


def test_cli_adds_versions_and_ensure_is_idempotent(tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "linear", "--model-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "linear", "--model-dir", str(tmp_path)])
    assert ModelStore(tmp_path).versions("linear") == ["1", "2"]
    result = runner.invoke(app, ["train", "--ensure", "2", "--model-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    store = ModelStore(tmp_path)
    assert store.versions("linear") == ["1", "2"]
    assert store.versions("iris") == ["1", "2"]
    result = runner.invoke(app, ["models", "--model-dir", str(tmp_path)])
    assert result.exit_code == 0 and "multilinear" in result.output


def test_cli_rejects_unknown_example(tmp_path: Path):
    result = CliRunner().invoke(app, ["train", "nope", "--model-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown example" in result.output


def test_command_groups_of_missing_extras_say_which_extra_to_install(monkeypatch):
    """The image installs only the `serve` extra: `mlscale rollout` there names its extra."""
    import importlib

    import mlscale.cli

    real = importlib.util.find_spec

    def without_extras(name: str, *args):
        return None if name in ("kubernetes", "locust") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_extras)
    try:
        serve_only = importlib.reload(mlscale.cli).app
        for group, extra in (("rollout", "rollout"), ("loadtest", "loadtest")):
            result = CliRunner().invoke(serve_only, [group, "status"])
            assert result.exit_code == 2, result.output
            assert f"pip install 'mlscale[{extra}]'" in result.output
            assert result.exception is None or isinstance(result.exception, SystemExit)
    finally:
        monkeypatch.undo()
        importlib.reload(mlscale.cli)
