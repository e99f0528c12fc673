"""The code's structure: rooms whose imports point only downward, and light programs that stay
light. Imports are read from the source (lazy ones inside functions included), not run."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"mlscale": ROOT / "mlscale", "mlscale.service": ROOT / "service",
            "mlscale.rollout": ROOT / "rollout", "mlscale.loadtest": ROOT / "loadtest"}  # fmt: skip
# The server's rooms, top to bottom: a room imports only rooms below it (and itself).
LAYERS = {
    "mlscale.service.cli": 5,
    "mlscale.service.__main__": 5,
    "mlscale.service.rest": 4,
    # Publishing runs what it publishes (compiling and verifying on the runtime's models).
    "mlscale.service.publish": 3,
    "mlscale.service.compile": 3,
    "mlscale.service.converters": 3,  # skl2onnx's converters, mended for compiling
    "mlscale.service.codecs": 3,
    "mlscale.service.runtime": 2,
    "mlscale.service.artifacts": 1,
    "mlscale.service": 0,  # contract, errors, settings, metrics: leaves everyone uses
}
HEAVY = ("sklearn", "numpy", "pandas", "scipy", "joblib")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports, wherever in the file the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # `from package import module` imports the module; `from module import name`, it
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, name, known) for name, path in found.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer(module: str) -> int | None:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len,
               default=None)  # fmt: skip
    return None if best is None else LAYERS[best]


def test_every_project_import_names_a_module_that_exists():
    """A module moved without its importers updated fails here, not in a request's path."""
    known = set(modules())
    missing = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            missing += [
                f"{name}: {t}" for t in targets if t.startswith("mlscale") and t not in known
            ]
    assert missing == []


def test_no_import_cycles_lazy_ones_included():
    assert cycle(graph()) is None, " -> ".join(cycle(graph()) or [])


def test_the_checks_find_a_cycle_and_an_upward_import():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    assert layer("mlscale.service.codecs.columns") > layer("mlscale.service.runtime.frames")


def test_the_server_rooms_import_only_downward():
    upward = [
        f"{src} -> {dst}"
        for src, targets in graph().items()
        for dst in targets
        if layer(src) is not None and layer(dst) is not None and layer(dst) > layer(src)
    ]
    assert upward == []


PROGRAMS = {
    "imports": "import mlscale.rollout.cli, mlscale.rollout.operator, mlscale.rollout.modelimage\n"
    "import mlscale.loadtest, mlscale.service.artifacts.manifest",
    "rollout --help": "import sys\nimport mlscale.cli\n"
    "sys.argv = ['mlscale', 'rollout', '--help']\n"
    "try:\n    mlscale.cli.app(prog_name='mlscale')\nexcept SystemExit:\n    pass",
}


@pytest.mark.parametrize("program", PROGRAMS.values(), ids=PROGRAMS.keys())
def test_the_operator_and_the_clis_help_load_no_scikit_learn(program: str):
    """The rollout controller and `mlscale rollout --help` do not pay for the server's
    scientific stack (seconds of imports, hundreds of MB in the operator's image)."""
    check = f"{program}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_test_modules_do_not_import_each_other():
    """Shared test code lives in conftest (fixtures) and tests/helpers.py."""
    found = []
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.test_"):
                found.append(f"{path.name} imports {node.module}")
    assert found == []
