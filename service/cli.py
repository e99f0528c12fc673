"""The server's commands: train examples, publish and package models, list the store, serve,
and send predictions. `mlscale/cli.py` composes them with the operator's and the load test's."""

import importlib.util
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from mlscale.service import contract

app = typer.Typer()
console = Console()

ModelDir = Annotated[
    Path, typer.Option("--model-dir", envvar="MLSCALE_MODEL_DIR", help="Root of the model store.")
]


def _http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{url!r} is not an http:// or https:// address, e.g. "
                                 "http://127.0.0.1:8080")  # fmt: skip
    return url.rstrip("/")


ServerUrl = Annotated[str, typer.Option(help="Server address.", callback=_http_url)]


def needs_scikit_learn(command: str) -> None:
    """Stop with a sentence where scikit-learn is missing: the slim image serves, never fits."""
    if importlib.util.find_spec("sklearn") is None:
        console.print(f"mlscale {command} needs scikit-learn, which the slim image leaves out: "
                      "run it where mlscale is installed with pip, or in the full image",
                      style="red", markup=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(2)


@app.command()
def train(
    models: Annotated[
        list[str] | None, typer.Argument(help="Example models to train (default: all).")
    ] = None,
    model_dir: ModelDir = Path("models"),
    ensure: Annotated[
        int | None,
        typer.Option(help="Only make sure versions 1..N exist; safe to re-run.", metavar="N"),
    ] = None,
) -> None:
    """Train example models and write each as a new immutable version.

    Examples:
      mlscale train             (one new version of every example)
      mlscale train iris        (one new version of iris)
      mlscale train --ensure 2  (versions 1 and 2 of each, if missing)
    """
    needs_scikit_learn("train")
    from mlscale.service.artifacts.store import ModelStore
    from mlscale.service.artifacts.train import EXAMPLES, ensure_versions, train_version
    from mlscale.service.errors import StoreError

    names = models or list(EXAMPLES)
    unknown = sorted(set(names) - set(EXAMPLES))
    if unknown:
        raise typer.BadParameter(f"unknown example(s) {unknown}; choose from {list(EXAMPLES)}")
    store = ModelStore(model_dir)
    for name in names:
        try:
            written = (
                ensure_versions(store, name, ensure) if ensure else [train_version(store, name)]
            )
        except StoreError as exc:
            console.print(f"[red]error:[/] {exc.message}")
            raise typer.Exit(1) from None
        for m in written:
            console.print(
                f"wrote [bold]{model_dir}/{m.name}/{m.version}[/] {m.estimator} {m.metrics}"
            )
        if not written:
            console.print(f"{name}: versions 1..{ensure} already present")


@app.command()
def publish(
    model_file: Annotated[
        Path, typer.Argument(help="A joblib or pickle file of a fitted estimator or pipeline.")
    ],
    name: Annotated[str, typer.Option(help="Model name in the store (a label value).")],
    version: Annotated[
        str | None, typer.Option(help="Version to write (default: the next number).")
    ] = None,
    sample: Annotated[
        Path | None,
        typer.Option(help="CSV of a few training rows: the column types of a DataFrame model."),
    ] = None,
    holdout: Annotated[
        Path | None, typer.Option(help="CSV of held-out rows, for offline metrics.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="The holdout's label column (needed with --holdout).")
    ] = None,
    allow_signature_change: Annotated[
        bool,
        typer.Option(
            "--allow-signature-change",
            help="Accept inputs, outputs, labels or task that differ from the latest version's.",
        ),
    ] = False,
    runtime: Annotated[
        str,
        typer.Option(
            help="auto: compile to ONNX and serve with onnxruntime when the graphs convert and "
            "verify, else scikit-learn; onnx: refuse otherwise; sklearn: do not compile."
        ),
    ] = "auto",
    model_dir: ModelDir = Path("models"),
) -> None:
    """Publish your own fitted scikit-learn model as a new immutable version.

    The manifest (inputs, outputs, labels, metrics) is inferred from the model, shown, then
    written, with the file's bytes as they are. A version that takes or answers something
    else than the latest one is refused unless --allow-signature-change; a file identical to
    an existing version is refused. Unpickling runs code: publish only files you trust.

    Example:  mlscale publish churn.joblib --name churn --sample train.csv \\
                  --holdout test.csv --target churned
    """
    needs_scikit_learn("publish")
    from mlscale.service.artifacts.store import ModelStore
    from mlscale.service.errors import MLScaleError
    from mlscale.service.publish import (
        load_file,
        plan,
        read_csv,
        restore_categories,
        split_target,
    )

    if (holdout is None) != (target is None):
        raise typer.BadParameter("--holdout and --target go together")
    store = ModelStore(model_dir)
    try:
        estimator, artifact = load_file(model_file)
        rows = restore_categories(estimator, read_csv(sample, "sample")) if sample else None
        held_out = (
            split_target(read_csv(holdout, "holdout"), target) if holdout and target else None
        )
        checked = plan(estimator, name, store, version=version, sample=rows, holdout=held_out,
                       allow_signature_change=allow_signature_change,
                       artifact=artifact, runtime=runtime)  # fmt: skip
        checked.write(store, console)
    except MLScaleError as exc:
        console.print(f"[red]error:[/] {exc.message}", soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def package(
    model: Annotated[
        str, typer.Argument(help="NAME:VERSION from the store.", metavar="NAME:VERSION")
    ],
    model_dir: ModelDir = Path("models"),
    tag: Annotated[
        str | None, typer.Option(help="Image tag.", show_default="mlscale-model/NAME:VERSION")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Base image with cp.", show_default="busybox:1.37, else the local one"),
    ] = None,
) -> None:
    """Build a model image holding one version, for the chart's model.image and
    `mlscale rollout deploy --model-image`. The server image needs no rebuild.

    Example:  mlscale package flowers:2 && kind load docker-image mlscale-model/flowers:2
    """
    try:
        from mlscale.service.artifacts.package import package as build
    except ModuleNotFoundError:  # the server image carries only what serving needs
        console.print("mlscale package builds model images with a container engine, which this "
                      "server image leaves out: run it where mlscale is installed with pip",
                      style="red", markup=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(2) from None
    from mlscale.service.artifacts.store import ModelStore
    from mlscale.service.errors import MLScaleError

    name, _, version = model.partition(":")
    if not name or not version:
        raise typer.BadParameter("give the model as NAME:VERSION, e.g. flowers:2")
    try:
        with console.status(f"building the image of {name}:{version}"):
            built = build(ModelStore(model_dir), name, version, tag=tag, base=base)
    except MLScaleError as exc:
        console.print(f"[red]error:[/] {exc.message}", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"built [bold]{built.tag}[/] ({name}/{built.manifest.version}, "
                  f"sha256 {built.manifest.sha256[:12]}…, on {built.base})")  # fmt: skip


@app.command("models")
def list_models(
    model_dir: ModelDir = Path("models"),
    verify: Annotated[
        bool, typer.Option("--verify", help="Check every artifact against its manifest's sha256.")
    ] = False,
) -> None:
    """List the models and versions in the store, with their offline metrics.

    A damaged version (a manifest that does not read, an artifact missing or changed) is
    listed with its file and the reason, and the command exits 1; the others are listed as usual.
    """
    from mlscale.service.artifacts.store import ModelStore
    from mlscale.service.errors import StoreError

    store = ModelStore(model_dir)
    table = Table("model", "version", "estimator", "metrics", "sha256", "created")
    if verify:
        table.add_column("artifact")
    damaged = []
    for name in store.models():
        for version, m in store.catalogue(name, verify):
            if isinstance(m, StoreError):
                damaged.append(m.message)  # names the version or its file
                table.add_row(name, version, "[red]damaged[/]")
                continue
            metrics = " ".join(f"{k}={v:.4g}" for k, v in m.metrics.items())
            row = [name, version, m.estimator, metrics, m.sha256[:12],
                   m.created.strftime("%Y-%m-%d %H:%M")]  # fmt: skip
            table.add_row(*row, *(["verified"] if verify else []))
    if not table.rows:
        console.print(f"no models in {model_dir}; run [bold]mlscale train[/]")
        raise typer.Exit(1)
    console.print(table)
    if damaged:
        plural = "s" if len(damaged) > 1 else ""
        console.print(f"[red]{len(damaged)} damaged version{plural}[/] (restore the file from "
                      "where it was published, or remove the version's folder and publish it "
                      "again):")  # fmt: skip
        for line in damaged:
            console.print(f"  {escape(line)}", soft_wrap=True)
        raise typer.Exit(1)


class _ServeCommand(TyperCommand):
    """`serve`, whose help ends with every setting. The list is made when the help is shown,
    so that no other command pays for importing the settings (pydantic-settings) to start."""

    @property
    def epilog(self) -> str:
        from mlscale.service.settings import environment

        lines = [f"  {name}={escape(default)}  {escape(text)}"
                 for name, default, text in environment()]  # fmt: skip
        return "Every setting, as an environment variable with its default (options win):\n\n" + (
            "\n".join(lines)
        )

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass  # click sets it in __init__; the property above is the one


@app.command(cls=_ServeCommand)
def serve(
    model: Annotated[str | None, typer.Option(help="Model name [MLSCALE_MODEL_NAME].")] = None,
    version: Annotated[
        str | None, typer.Option(help="Default version or 'latest' [MLSCALE_MODEL_VERSION].")
    ] = None,
    extra_versions: Annotated[
        str | None, typer.Option(help="More versions to load, comma-separated.")
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            help="More models to serve beside --model, e.g. 'flowers:2,linear' [MLSCALE_MODELS]."
        ),
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model store root.")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes (keep 1 on Kubernetes).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    """Serve a model over HTTP. Every setting also reads from MLSCALE_* variables.

    Example:  mlscale serve --model iris --version 2 --extra-versions 1

    Several models from one server:  mlscale serve --model iris --models flowers:2,linear
    """
    from pydantic import ValidationError

    from mlscale.service.errors import MLScaleError
    from mlscale.service.rest.server import run
    from mlscale.service.runtime.dataplane import preflight
    from mlscale.service.settings import ModelSettings, ServerSettings, Settings, invalid

    def given(**options: object) -> dict[str, object]:  # options win over MLSCALE_* variables
        return {k: v for k, v in options.items() if v is not None}

    model_settings = given(model_name=model, model_version=version, model_dir=model_dir,
                           extra_versions=extra_versions, models=models)  # fmt: skip
    server_settings = given(host=host, port=port, workers=workers, log_level=log_level)
    errors = Console(stderr=True)
    try:
        settings = Settings(
            model=ModelSettings(**model_settings), server=ServerSettings(**server_settings)
        )
    except ValidationError as exc:
        for sentence in invalid(exc):
            errors.print(f"[red]invalid setting[/] {escape(sentence)}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        unserved = preflight(settings.model)
    except MLScaleError as exc:
        errors.print(f"[red]cannot serve[/]: {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(1) from None
    for why in unserved:  # the others serve; this one answers 503 with the reason
        errors.print(f"[yellow]not served[/]: {escape(why)}", soft_wrap=True)
    run(settings)


def wait_ready(url: str, timeout: float) -> bool:
    """Poll the V2 readiness endpoint until it answers 200 or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


@app.command()
def infer(
    model: Annotated[str, typer.Argument(help="Model name, e.g. iris.")],
    rows: Annotated[
        str,
        typer.Argument(
            help='Rows as JSON, e.g. "[[5.1, 3.5, 1.4, 0.2]]", or objects keyed by column, '
            'e.g. \'[{"petal_width": 0.2, "sepal_size": "small"}]\'; a text model\'s '
            "documents, e.g. '[\"a great film\"]'."
        ),
    ],
    url: ServerUrl = "http://127.0.0.1:8080",
    version: Annotated[str | None, typer.Option(help="Ask this version.")] = None,
    output: Annotated[list[str] | None, typer.Option(help="Outputs to return.")] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the server to turn ready first.")
    ] = 0,
) -> None:
    """Send one V2 infer request and print the answer.

    Rows are lists of values (one tensor) or, for a model fitted on a DataFrame, objects
    keyed by column (one input per column).

    Examples:
      mlscale infer iris "[[5.1, 3.5, 1.4, 0.2]]" --output predict_proba
      mlscale infer flowers '[{"sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2,
                               "sepal_size": "small"}]'
    """
    if wait and not wait_ready(url, wait):
        console.print(f"[red]{url} did not turn ready within {wait}s[/]")
        raise typer.Exit(1)
    body: dict[str, object] = {"inputs": infer_inputs(rows)}
    if output:
        body["outputs"] = [{"name": o} for o in output]
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    try:
        answer = _post_json(url + path, body)
    except urllib.error.HTTPError as exc:
        console.print(f"[red]{exc.code}[/] {exc.read().decode()}")
        raise typer.Exit(1) from None
    except urllib.error.URLError as exc:
        console.print(f"[red]cannot reach {url}:[/] {exc.reason}; is `mlscale serve` running?")
        raise typer.Exit(1) from None
    json.dump(answer, sys.stdout)
    sys.stdout.write("\n")


@app.command()
def check(
    models: Annotated[
        list[str], typer.Argument(help="Names of the models the server should serve.")
    ],
    url: ServerUrl = "http://127.0.0.1:8080",
    expect_version: Annotated[
        str | None, typer.Option(help="Fail unless this version answers (of one model).")
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 30,
) -> None:
    """Smoke-test a running server: readiness, then each model's metadata and one inference
    of its declared shape.

    Used by the chart's `helm test` hook. Example:  mlscale check iris --expect-version 2
    """
    if expect_version is not None and len(models) > 1:
        console.print("[red]FAIL[/] --expect-version checks one model; name one")
        raise typer.Exit(2)
    deadline = time.monotonic() + wait
    if not wait_ready(url, wait):
        console.print(f"[red]FAIL[/] {url} did not turn ready within {wait}s")
        raise typer.Exit(1)
    for model in models:
        try:
            meta = until_connected(deadline, _get_json, f"{url}/v2/models/{model}")
            infer = f"{url}/v2/models/{model}/infer"
            answer = until_connected(deadline, _post_json, infer, contract.example_request(meta))
        except urllib.error.HTTPError as exc:
            console.print(f"[red]FAIL[/] HTTP {exc.code} from {exc.url}: {_error_text(exc)}")
            raise typer.Exit(1) from None
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            console.print(f"[red]FAIL[/] {model}: {exc}")
            raise typer.Exit(1) from None
        version = answer.get("model_version")
        if expect_version is not None and version != expect_version:
            console.print(f"[red]FAIL[/] version {version} answered, expected {expect_version}")
            raise typer.Exit(1)
        console.print(f"OK {model} version {version} answered: {answer['outputs'][0]['data']}")


def until_connected(
    deadline: float, call: Callable[..., dict[str, Any]], *args: Any
) -> dict[str, Any]:
    """`call(*args)`, again every half second while its connection is refused or reset, until
    the deadline: right after an upgrade, a Service can still send a request to a pod that is
    going away. Any answer, an HTTP error included, is final."""
    while True:
        try:
            return call(*args)
        except urllib.error.HTTPError:
            raise
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionError) or time.monotonic() >= deadline:
                raise
        except ConnectionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.5)


def _error_text(error: urllib.error.HTTPError) -> str:
    """The server's own message (the protocol's {"error": ...}), else the status text."""
    body = error.read().decode(errors="replace")
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.strip() or str(error.reason)


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def infer_inputs(rows: str) -> list[dict[str, Any]]:
    """`mlscale infer`'s ROWS as V2 inputs: lists of values as one tensor, objects as one
    input per column. Numbers (and nulls) travel as FP64, booleans as BOOL, anything else as
    BYTES, which carries any mix."""
    try:
        data = json.loads(rows)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON ({exc})", param_hint="ROWS") from None
    if not isinstance(data, list) or not data:
        raise typer.BadParameter("give a JSON list of rows, e.g. [[5.1, 3.5, 1.4, 0.2]]",
                                 param_hint="ROWS")  # fmt: skip
    if all(isinstance(row, dict) for row in data):
        columns = list(dict.fromkeys(name for row in data for name in row))
        return [_tensor(name, [len(data)], [row.get(name) for row in data]) for name in columns]
    if any(isinstance(row, dict) for row in data):
        raise typer.BadParameter("rows are all lists or all objects", param_hint="ROWS")
    if isinstance(data[0], list):
        if any(not isinstance(row, list) or len(row) != len(data[0]) for row in data):
            raise typer.BadParameter("every row is a list of the same length", param_hint="ROWS")
        values = [v for row in data for v in row]
        return [_tensor("input-0", [len(data), len(data[0])], values, data)]
    return [_tensor("input-0", [len(data)], data)]


def _tensor(name: str, shape: list[int], values: list[Any], data: Any = None) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        datatype = "BOOL"
    elif all(type(v) in (int, float) for v in present):
        datatype = "FP64"
    else:
        datatype = "BYTES"
    return {"name": name, "shape": shape, "datatype": datatype,
            "data": values if data is None else data}  # fmt: skip


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


if __name__ == "__main__":
    app()
