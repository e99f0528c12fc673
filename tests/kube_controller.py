"""A simulated Deployment controller for the emulator: pods per template, rolling updates
with Kubernetes' documented maxSurge/maxUnavailable rules, status and conditions.

Whether a pod of a given model version becomes ready, never does, or crash-loops is up to the
test (`behaviour`). Time runs fast: a pod turns ready `ready_after` seconds after creation.
"""

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable

from tests.kube_emulator import Emulator, now

Behaviour = Callable[[str], str]  # model version -> "ready" | "never" | "crash"


def pod_version(pod: dict) -> str:
    env = pod["spec"]["containers"][0].get("env", [])
    return next((e["value"] for e in env if e["name"] == "MLSCALE_MODEL_VERSION"), "")


def _resolve(value: int | str, replicas: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = replicas * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


class DeploymentController:
    def __init__(self, api: Emulator, ns: str, behaviour: Behaviour, ready_after: float = 0.05):
        self.api, self.ns, self.behaviour, self.ready_after = api, ns, behaviour, ready_after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._progress: dict[str, tuple[str, float]] = {}  # name -> (progress key, since)
        self._serial = 0

    def __enter__(self) -> "DeploymentController":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            deployments = self.api.list("deployments", self.ns)
            for deployment in deployments:
                self.reconcile(deployment)
            self._collect_garbage({d["metadata"]["name"] for d in deployments})
            self._stop.wait(0.02)

    def _collect_garbage(self, owners: set[str]) -> None:
        """Pods of a deleted Deployment go, as the garbage collector makes them."""
        for pod in self.api.list("pods", self.ns):
            if pod["metadata"]["annotations"].get("emulator/owner") not in owners:
                self.api.delete("pods", self.ns, pod["metadata"]["name"])

    def reconcile(self, d: dict) -> None:
        name = d["metadata"]["name"]
        spec = d["spec"]
        replicas = spec.get("replicas", 1)
        template_hash = hashlib.sha256(
            json.dumps(spec["template"], sort_keys=True).encode()
        ).hexdigest()[:10]
        pods = [
            p
            for p in self.api.list("pods", self.ns)
            if p["metadata"].get("annotations", {}).get("emulator/owner") == name
        ]
        self._update_pods(pods)
        pods = [
            p
            for p in self.api.list("pods", self.ns)
            if p["metadata"].get("annotations", {}).get("emulator/owner") == name
        ]
        new = [p for p in pods if p["metadata"]["labels"]["pod-template-hash"] == template_hash]
        old = [p for p in pods if p not in new]
        ready = [p for p in pods if self._ready(p)]
        rolling = spec.get("strategy", {}).get("rollingUpdate", {})
        surge = _resolve(rolling.get("maxSurge", "25%"), replicas, round_up=True)
        unavailable = _resolve(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1  # as Kubernetes does, so a rollout can always progress
        # Scale up the new ReplicaSet within maxSurge.
        room = replicas + surge - len(pods)
        for _ in range(max(0, min(room, replicas - len(new)))):
            self._create_pod(d, template_hash)
        # Scale down old pods while keeping replicas - maxUnavailable available.
        removable = len(ready) - (replicas - unavailable)
        for pod in sorted(old, key=self._ready):  # unready ones first
            if not self._ready(pod):
                self.api.delete("pods", self.ns, pod["metadata"]["name"])
            elif removable > 0:
                self.api.delete("pods", self.ns, pod["metadata"]["name"])
                removable -= 1
        for pod in new[replicas:] if not old else []:
            self.api.delete("pods", self.ns, pod["metadata"]["name"])
        self._write_status(d, replicas)

    def _create_pod(self, d: dict, template_hash: str) -> None:
        self._serial += 1
        template = d["spec"]["template"]
        labels = {**template["metadata"].get("labels", {}), "pod-template-hash": template_hash}
        node = f"worker-{self._serial % 3 + 1}"
        self.api.put(
            "pods",
            self.ns,
            {
                "metadata": {
                    "name": f"{d['metadata']['name']}-{template_hash}-{self._serial}",
                    "labels": labels,
                    "annotations": {
                        **template["metadata"].get("annotations", {}),
                        "emulator/owner": d["metadata"]["name"],
                        "emulator/born": str(time.monotonic()),
                    },
                },
                "spec": {**template["spec"], "nodeName": node},
                "status": {
                    "phase": "Pending",
                    "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [
                        {
                            "name": "server",
                            "ready": False,
                            "restartCount": 0,
                            "image": "mlscale",
                            "imageID": "mlscale@sha256:0",
                        }
                    ],
                },
            },
        )

    def _update_pods(self, pods: list[dict]) -> None:
        for pod in pods:
            age = time.monotonic() - float(pod["metadata"]["annotations"]["emulator/born"])
            if age < self.ready_after:
                continue
            fate = self.behaviour(pod_version(pod))
            status = pod["status"]
            container = status["containerStatuses"][0]
            if fate == "ready" and not container["ready"]:
                status.update(phase="Running", conditions=[{"type": "Ready", "status": "True"}])
                container.update(ready=True, state={"running": {"startedAt": now()}})
            elif fate == "crash":
                container["restartCount"] += 1
                container["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
                status["phase"] = "Running"
            elif fate == "never" and status["phase"] != "Running":
                status["phase"] = "Running"
            else:
                continue
            self.api.put("pods", self.ns, pod)

    @staticmethod
    def _ready(pod: dict) -> bool:
        return pod["status"]["containerStatuses"][0]["ready"]

    def _write_status(self, d: dict, replicas: int) -> None:
        name = d["metadata"]["name"]
        current = self.api.get("deployments", self.ns, name)
        if current is None:
            return
        template_hash = hashlib.sha256(
            json.dumps(current["spec"]["template"], sort_keys=True).encode()
        ).hexdigest()[:10]
        pods = [
            p
            for p in self.api.list("pods", self.ns)
            if p["metadata"].get("annotations", {}).get("emulator/owner") == name
        ]
        updated = [p for p in pods if p["metadata"]["labels"]["pod-template-hash"] == template_hash]
        ready = sum(self._ready(p) for p in pods)
        status = {
            "observedGeneration": current["metadata"]["generation"],
            "replicas": len(pods),
            "updatedReplicas": len(updated),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, len(pods) - ready),
        }
        complete = len(updated) == replicas == len(pods) and all(self._ready(p) for p in updated)
        key = f"{template_hash}:{len(updated)}:{sum(self._ready(p) for p in updated)}"
        last_key, since = self._progress.get(name, ("", time.monotonic()))
        if key != last_key:
            since = time.monotonic()
            self._progress[name] = (key, since)
        deadline = current["spec"].get("progressDeadlineSeconds", 600)
        if complete:
            progressing = {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
            }
        elif time.monotonic() - since > deadline:
            progressing = {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": f"ReplicaSet {name}-{template_hash} has timed out progressing.",
            }
        else:
            progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
        status["conditions"] = [
            progressing,
            {"type": "Available", "status": "True" if ready >= replicas - 1 else "False"},
        ]
        if current.get("status") != status:
            current["status"] = status
            self.api.update("deployments", self.ns, current)  # lost to a delete: read again
