"""The rollout history, kept in the ModelRollout's status (the last KEEP_HISTORY rollouts), so
every laptop and every controller replica sees the same record."""

from dataclasses import asdict, dataclass
from typing import Any

from mlscale.rollout.resource import KEEP_HISTORY, now_iso, seconds_since


@dataclass
class Entry:
    version: str
    previous: str
    strategy: str  # Rolling | Canary
    outcome: str  # succeeded | rolled-back | aborted | refused
    detail: str
    started: str
    seconds: float
    image: str = ""  # the model images of `version` and `previous`, for releases that use them
    previousImage: str = ""
    model: str = ""  # of the release's set; "": the first


def record(status: dict[str, Any], run: dict[str, Any], outcome: str, detail: str) -> None:
    """Append how the rollout in `run` (status.rollout) ended to status.history."""
    started = run.get("startedAt") or now_iso()
    seconds = round(seconds_since(started), 1)
    new = Entry(
        run["version"], run.get("previousVersion", ""), run.get("strategy", ""), outcome,
        detail, started, seconds, run.get("image", ""), run.get("previousImage", ""),
        run.get("model", ""),
    )  # fmt: skip
    status["history"] = [*status.get("history", []), asdict(new)][-KEEP_HISTORY:]
