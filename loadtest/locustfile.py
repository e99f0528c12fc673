"""Locust users sending real Open Inference Protocol requests, and a stepped load shape.

Usable on its own (`locust -f loadtest/locustfile.py --host http://...`, the model from
MLSCALE_LOADTEST_MODEL, default iris) or through the runner (`python -m mlscale.loadtest`),
which makes a user class for its run with `users_for`. Requests are built from the model's
metadata (`bodies.py`), so every one is valid.
"""

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from locust import FastHttpUser, LoadTestShape, between, task

from mlscale.loadtest.bodies import infer_body
from mlscale.service.contract import INFER, MODEL_METADATA, VERSION_HEADER


@dataclass
class Tally:
    """What the users of one run saw: answers per model version, and how often a user saw the
    version change from one answer to the next (a rollout at work)."""

    versions: Counter[str] = field(default_factory=Counter)
    switches: int = 0


class InferUser(FastHttpUser):
    abstract = True  # a run's own subclass (users_for) says which model and where to count
    wait_time = between(0.05, 0.15)
    model: str
    tally: Tally

    def on_start(self) -> None:
        path = MODEL_METADATA.format(name=self.model)
        self.meta: dict[str, Any] | None = None
        with self.client.get(path, name="metadata", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"metadata: {r.status_code}")
            else:
                self.meta = r.json()
        self.last_version: str | None = None

    def infer(self, rows: int, name: str) -> None:
        body = infer_body(self.meta, rows)
        with self.client.post(
            INFER.format(name=self.model), json=body, name=name, catch_response=True
        ) as r:
            if r.status_code != 200:  # 0 when the connection failed
                r.failure(f"status {r.status_code}: {r.error or r.text}")
                return
            version = r.headers.get(VERSION_HEADER)
            if not version:
                r.failure(f"no {VERSION_HEADER} header")
            elif len(r.json()["outputs"][0]["data"]) != rows:
                r.failure("wrong number of predictions")
            else:
                self.tally.versions[version] += 1
                if self.last_version is not None and version != self.last_version:
                    self.tally.switches += 1
                self.last_version = version

    @task(4)
    def single_row(self) -> None:
        self.infer(1, "infer 1 row")

    @task(1)
    def batch(self) -> None:
        self.infer(16, "infer 16 rows")


def users_for(model: str, tally: Tally) -> type[InferUser]:
    """The user class of one run: its model, and the tally its users count into."""
    return type("InferUser", (InferUser,), {"abstract": False, "model": model, "tally": tally})


# `locust -f loadtest/locustfile.py` runs this one.
EnvInferUser = users_for(os.environ.get("MLSCALE_LOADTEST_MODEL", "iris"), Tally())


class StepShape(LoadTestShape):
    """Ramp up in `steps` equal steps, hold at the peak, ramp down, stop."""

    def __init__(
        self,
        users: int = 50,
        steps: int = 5,
        step_seconds: float = 20,
        hold_seconds: float = 60,
        down_seconds: float = 10,
    ) -> None:
        super().__init__()
        self.stages: list[tuple[float, int]] = []  # (ends at second, users)
        t = 0.0
        for i in range(1, steps + 1):
            t += step_seconds
            self.stages.append((t, max(1, users * i // steps)))
        self.ramp_end = t
        self.hold_end = t + hold_seconds
        self.stages.append((self.hold_end, users))
        self.stages.append((self.hold_end + down_seconds, max(1, users // 5)))
        self.spawn_rate = max(1.0, users / max(step_seconds, 1))

    @property
    def duration(self) -> float:
        return self.stages[-1][0]

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        for ends, users in self.stages:
            if elapsed < ends:
                return users, self.spawn_rate
        return None
