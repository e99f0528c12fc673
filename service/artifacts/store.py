"""The model store: immutable versions under `<root>/<name>/<version>/`.

A version folder holds `model.joblib` and `manifest.json` (and, for a version published with
the onnx runtime, its compiled graphs `model.onnx` and `scores.onnx`). Versions are written to
a hidden temporary folder and renamed into place, so a half-written version is never visible,
and an existing version is never overwritten. Loading checks every artifact's sha256, and the
scikit-learn version before unpickling: a joblib file is code. scikit-learn and joblib are
imported only where a version is unpickled or written: a server of compiled versions (the slim
image) reads its store without them.
"""

import hashlib
import os
import platform
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlscale.service.artifacts.manifest import (
    ARTIFACT,
    MANIFEST,
    ONNX,
    SKLEARN,
    Columns,
    Compiled,
    Manifest,
    TensorSpec,
    check_label,
)
from mlscale.service.errors import ModelNotFound, StoreError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        """Complete versions of a model, oldest first (numeric versions sort as numbers)."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [
            p.name
            for p in folder.iterdir()
            if not p.name.startswith(".") and (p / MANIFEST).is_file()
        ]
        return sorted(found, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))

    def resolve(self, name: str, version: str) -> str:
        """Turn `latest` into a concrete version; refuse versions the store does not have."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' is not in the store at {self.root}")
        if version == "latest":
            return versions[-1]
        if version not in versions:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; the store has {', '.join(versions)}"
            )
        return version

    def manifest(self, name: str, version: str) -> Manifest:
        path = self.root / name / self.resolve(name, version) / MANIFEST
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise StoreError(f"{path}: {exc.strerror}") from None
        except ValidationError as exc:
            raise StoreError(f"{path}: {_first_problem(exc)}") from None

    def verify(self, name: str, version: str) -> Manifest:
        """The manifest, once every artifact is there and its sha256 is the manifest's: the
        joblib file, and the compiled graphs of a version published with them."""
        manifest = self.manifest(name, version)
        expected = {ARTIFACT: manifest.sha256, **(manifest.compiled.files if manifest.compiled
                                                   else {})}  # fmt: skip
        for file, sha256 in expected.items():
            artifact = self.folder(manifest) / file  # where loading reads it
            if not artifact.is_file():
                raise StoreError(f"{name}/{manifest.version}: {file} is missing")
            actual = sha256_of(artifact)
            if actual != sha256:
                raise StoreError(
                    f"{name}/{manifest.version}: {file} sha256 {actual[:12]}… does not match "
                    f"the manifest's {sha256[:12]}…; refusing to load a changed artifact"
                )
        return manifest

    def folder(self, manifest: Manifest) -> Path:
        """Where a version's artifacts are: checked by `verify`, read by loading."""
        return self.root / manifest.name / manifest.version

    def check(self, name: str, version: str, runtime: str = "auto") -> Manifest:
        """Everything loading checks, short of unpickling: intact, and made for this runtime.
        A compiled version runs on onnxruntime whatever scikit-learn is here, unless `runtime`
        is sklearn (MLSCALE_RUNTIME): then it is its joblib file, as any other."""
        manifest = self.verify(name, version)
        if manifest.runtime == ONNX and runtime != SKLEARN:
            return manifest
        here = _sklearn_version()
        if runtime == ONNX or here is None:
            raise StoreError(
                f"{name}/{manifest.version} runs on scikit-learn (it was not compiled when "
                "published), and this server serves compiled versions only (the slim image, "
                "without scikit-learn); publish it again with --runtime onnx, or serve it with "
                "the full image"
            )
        if manifest.sklearn_version != here:
            raise StoreError(
                f"{name}/{manifest.version} was trained with scikit-learn "
                f"{manifest.sklearn_version}, this server runs {here}; "
                "retrain it or serve it with the matching image"
            )
        return manifest

    def load(self, name: str, version: str) -> tuple[Manifest, Any]:
        """Check, then unpickle. Raises StoreError rather than load anything doubtful."""
        manifest = self.check(name, version, SKLEARN)
        return manifest, self.unpickle(manifest)

    def unpickle(self, manifest: Manifest) -> Any:
        """The estimator of a version `check` has passed (for the sklearn runtime). Unpickling
        imports the modules the model's classes and functions live in: one this server lacks
        is a StoreError that names it."""
        import joblib

        try:
            return joblib.load(self.folder(manifest) / ARTIFACT)
        except ModuleNotFoundError as exc:
            raise StoreError(
                f"{manifest.name}/{manifest.version} uses code from module {exc.name!r}, which "
                "this server cannot import: install that module in the server's image (its "
                "code was not published with the model)"
            ) from exc

    def catalogue(self, name: str, verify: bool = False) -> list[tuple[str, Manifest | StoreError]]:
        """Every version, oldest first, with its manifest (its artifact checked too, with
        `verify`) or why it does not read: one damaged version hides none of the others."""
        found: list[tuple[str, Manifest | StoreError]] = []
        for version in self.versions(name):
            try:
                found.append((version, self.verify(name, version) if verify
                              else self.manifest(name, version)))  # fmt: skip
            except StoreError as exc:
                found.append((version, exc))
        return found

    def _refuse_duplicate(self, name: str, version: str, sha256: str) -> None:
        for existing, m in self.catalogue(name):
            if isinstance(m, Manifest) and m.sha256 == sha256:
                raise StoreError(
                    f"{name}/{version} would be identical to {name}/{existing} (sha256 "
                    f"{sha256[:12]}…); nothing written"
                )

    def next_version(self, name: str) -> str:
        numeric = [int(v) for v in self.versions(name) if v.isdigit()]
        return str(max(numeric, default=0) + 1)

    def write(
        self,
        name: str,
        version: str,
        estimator: Any,
        *,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        metrics: dict[str, float],
        labels: list[str] | None = None,
        columns: Columns | None = None,
        artifact: bytes | None = None,
        unique: bool = False,
        compiled: Compiled | None = None,
        compiled_files: dict[str, bytes] | None = None,
    ) -> Manifest:
        """Write a new version atomically. An existing version is refused, never replaced;
        with `unique`, so is an artifact identical to an existing version's. `artifact`: the
        estimator's joblib or pickle file as published, stored as is (else it is dumped)."""
        import joblib
        import numpy
        import sklearn

        check_label("name", name)
        check_label("version", version)
        final = self.root / name / version
        if final.exists():
            raise StoreError(f"{name}/{version} already exists; versions are immutable")
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
        try:
            if artifact is None:
                joblib.dump(estimator, staging / ARTIFACT)
            else:
                (staging / ARTIFACT).write_bytes(artifact)
            sha256 = sha256_of(staging / ARTIFACT)
            if unique:
                self._refuse_duplicate(name, version, sha256)
            manifest = Manifest(
                name=name,
                version=version,
                sha256=sha256,
                sklearn_version=sklearn.__version__,
                numpy_version=numpy.__version__,
                python_version=platform.python_version(),
                estimator=type(estimator).__name__,
                inputs=inputs,
                outputs=outputs,
                metrics=metrics,
                labels=labels or [],
                columns=columns,
                pandas_version=_pandas_version() if columns else None,
                created=datetime.now(UTC),
                runtime=ONNX if compiled else SKLEARN,
                compiled=compiled,
            )
            for file, data in (compiled_files or {}).items():
                (staging / file).write_bytes(data)
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
            os.chmod(staging, 0o755)  # mkdtemp makes it 0700; readers may run as another user
            try:
                # rename(2) onto a non-empty directory fails, so a racing writer cannot clobber.
                staging.rename(final)
            except OSError as exc:
                raise StoreError(
                    f"{name}/{version} already exists; versions are immutable"
                ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest


def _first_problem(error: ValidationError) -> str:
    """A damaged manifest in one line: the first thing wrong, and where."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{first['msg']} ({where})" if where else first["msg"]


def _sklearn_version() -> str | None:
    """scikit-learn's version here; None in the slim image, which has none."""
    try:
        import sklearn
    except ImportError:
        return None
    return str(sklearn.__version__)


def _pandas_version() -> str:
    import pandas  # only models that take DataFrames need it

    return pandas.__version__
