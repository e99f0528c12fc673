"""On PYTHONPATH, makes this interpreter the slim image's: scikit-learn, scipy, pandas and
joblib cannot be imported (tests/test_compiled.py serves compiled versions so, without
building the image)."""

import sys
from importlib.abc import MetaPathFinder

ABSENT = {"sklearn", "scipy", "pandas", "joblib"}


class Absent(MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the slim image)")


sys.meta_path.insert(0, Absent())
