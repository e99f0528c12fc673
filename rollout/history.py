"""Rollout history, kept on the cluster in one ConfigMap per release, so every laptop (and
the in-cluster operator) sees the same record."""

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from kubernetes import client

from mlscale.rollout.kube import Kube, NotFound

KEY = "history.json"
KEEP = 50


@dataclass
class Entry:
    version: str
    previous: str
    strategy: str  # rolling | canary | rollback
    outcome: str  # succeeded | rolled-back | aborted | failed
    detail: str
    started: str
    seconds: float
    image: str = ""  # the model images of `version` and `previous`, for releases that use them
    previous_image: str = ""


def entry(
    version: str,
    previous: str,
    strategy: str,
    outcome: str,
    detail: str,
    started: float,
    image: str | None = None,
    previous_image: str | None = None,
) -> Entry:
    return Entry(
        version,
        previous,
        strategy,
        outcome,
        detail,
        datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        round(time.time() - started, 1),
        image or "",
        previous_image or "",
    )


class History:
    def __init__(self, kube: Kube, release: str) -> None:
        self.kube = kube
        self.name = f"{release}-rollout-history"
        self.release = release

    def read(self) -> list[Entry]:
        kube = self.kube
        try:
            cm = kube.call(kube.core.read_namespaced_config_map, self.name, kube.namespace)
        except NotFound:
            return []
        return [Entry(**e) for e in json.loads((cm.data or {}).get(KEY, "[]"))]

    def append(self, new: Entry) -> None:
        """Read-modify-write with the ConfigMap's resourceVersion; 409 means read again."""

        kube = self.kube

        def attempt() -> None:
            try:
                cm = kube.call(kube.core.read_namespaced_config_map, self.name, kube.namespace)
            except NotFound:
                body = client.V1ConfigMap(
                    metadata=client.V1ObjectMeta(
                        name=self.name,
                        labels={
                            "app.kubernetes.io/instance": self.release,
                            "app.kubernetes.io/part-of": "mlscale",
                        },
                    ),
                    data={KEY: json.dumps([asdict(new)], indent=1)},
                )
                kube.call(kube.core.create_namespaced_config_map, kube.namespace, body)
                return
            entries = json.loads((cm.data or {}).get(KEY, "[]"))
            cm.data = {KEY: json.dumps([*entries, asdict(new)][-KEEP:], indent=1)}
            kube.call(kube.core.replace_namespaced_config_map, self.name, kube.namespace, cm)

        self.kube.retry_on_conflict(attempt)
