"""Print the pinned requirements of one of pyproject.toml's extras, `mlscale[...]` references
expanded: what an image installs before its code is copied in (a layer of its own).

    python3 scripts/requirements.py EXTRA [pyproject.toml]
"""

import sys
import tomllib


def pins(extras: dict[str, list[str]], extra: str) -> list[str]:
    found: list[str] = []
    for requirement in extras[extra]:
        nested = (
            pins(extras, requirement[8:-1]) if requirement.startswith("mlscale[") else [requirement]
        )
        found += [p for p in nested if p not in found]
    return found


if __name__ == "__main__":
    with open(sys.argv[2] if len(sys.argv) > 2 else "pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    print("\n".join(pins(extras, sys.argv[1])))
