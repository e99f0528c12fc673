"""A real Kubernetes control plane for the operator's tests, run the way controller-runtime's
envtest runs one: etcd, kube-apiserver (RBAC on) and kube-controller-manager with the
Deployment, ReplicaSet, HorizontalPodAutoscaler, garbage-collector and service-account
controllers, from the binaries `k8s/nodeimage/build.sh control-plane` builds (the kind node
image uses the same ones).

There is no scheduler, kubelet or container runtime: `tests/kubelet.py` plays the nodes.
"""

import itertools
import json
import os
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3

from tests.conftest import free_port, pins
from tests.netns import NetNamespace

ADMIN_TOKEN = "mlscale-test-admin"  # a throwaway server's static token
# The kinds the tests create: kind -> (apiVersion, plural).
KINDS = {
    "Namespace": ("v1", "namespaces"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "Service": ("v1", "services"),
    "ConfigMap": ("v1", "configmaps"),
    "Pod": ("v1", "pods"),
    "Deployment": ("apps/v1", "deployments"),
    "ReplicaSet": ("apps/v1", "replicasets"),
    "HorizontalPodAutoscaler": ("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
    "Role": ("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": ("coordination.k8s.io/v1", "leases"),
    "Event": ("v1", "events"),
    "CustomResourceDefinition": ("apiextensions.k8s.io/v1", "customresourcedefinitions"),
    "ModelRollout": ("mlscale.dev/v1alpha1", "modelrollouts"),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", "httproutes"),
    "Gateway": ("gateway.networking.k8s.io/v1", "gateways"),
    "Middleware": ("traefik.io/v1alpha1", "middlewares"),
    "TraefikService": ("traefik.io/v1alpha1", "traefikservices"),
}
API_VERSIONS = {plural: api for api, plural in KINDS.values()}


def binaries() -> dict[str, Path] | None:
    """Where the pinned etcd and Kubernetes binaries are cached, or None if not built."""
    pinned = pins()
    cache = Path(os.environ.get("MLSCALE_CACHE", Path.home() / ".cache" / "mlscale"))
    bin_dir = cache / "nodeimage" / "bin"
    kube = bin_dir / f"kubernetes-{pinned['KUBERNETES_VERSION']}"
    found = {
        "etcd": bin_dir / f"etcd-{pinned['ETCD_VERSION']}" / "etcd",
        "kube-apiserver": kube / "kube-apiserver",
        "kube-controller-manager": kube / "kube-controller-manager",
    }
    return found if all(p.is_file() for p in found.values()) else None


def prometheus_binary() -> Path | None:
    """The pinned Prometheus `k8s/nodeimage/build.sh control-plane` builds, if built."""
    cache = Path(os.environ.get("MLSCALE_CACHE", Path.home() / ".cache" / "mlscale"))
    version = pins()["PROMETHEUS_VERSION"]
    found = cache / "nodeimage" / "bin" / f"prometheus-{version}" / "prometheus"
    return found if found.is_file() else None


class ApiServerError(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(f"{status}: {body.get('message', body)}")
        self.status, self.body = status, body


class Admin:
    """The cluster admin's JSON client, for what tests set up and look at (the operator under
    test uses the official client, with its own, Role-bound identity)."""

    def __init__(self, url: str, ca: Path, token: str = ADMIN_TOKEN) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.http = urllib3.PoolManager(ca_certs=str(ca), maxsize=8)

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json", timeout: float = 30) -> Any:  # fmt: skip
        response = self.http.request(
            method,
            self.url + path,
            body=None if body is None else json.dumps(body),
            headers={**self.headers, "Content-Type": content_type},
            timeout=timeout,
        )
        payload = json.loads(response.data or b"{}")
        if response.status >= 400:
            raise ApiServerError(response.status, payload)
        return payload

    @staticmethod
    def path(plural: str, ns: str, name: str = "") -> str:
        api = API_VERSIONS[plural]
        path = "/api/v1" if api == "v1" else f"/apis/{api}"
        path += f"/namespaces/{ns}/{plural}" if ns else f"/{plural}"
        return f"{path}/{quote(name)}" if name else path

    def create(self, obj: dict, ns: str = "") -> dict:
        return self.request("POST", self.path(KINDS[obj["kind"]][1], ns), obj)

    def get(self, plural: str, ns: str, name: str) -> dict | None:
        try:
            return self.request("GET", self.path(plural, ns, name))
        except ApiServerError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, plural: str, ns: str, selector: str = "") -> list[dict]:
        query = f"?labelSelector={quote(selector)}" if selector else ""
        return self.request("GET", self.path(plural, ns) + query)["items"]

    def patch(self, plural: str, ns: str, name: str, patch: dict, sub: str = "") -> dict:
        path = self.path(plural, ns, name) + (f"/{sub}" if sub else "")
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def delete(self, plural: str, ns: str, name: str, grace: int | None = None) -> None:
        query = f"?gracePeriodSeconds={grace}" if grace is not None else ""
        try:
            self.request("DELETE", self.path(plural, ns, name) + query)
        except ApiServerError as exc:
            if exc.status != 404:
                raise

    def token(self, ns: str, service_account: str) -> str:
        """A token for a service account, as the kubelet would mount one."""
        path = f"/api/v1/namespaces/{ns}/serviceaccounts/{service_account}/token"
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": 3600}}  # fmt: skip
        return self.request("POST", path, request)["status"]["token"]


class ControlPlane:
    def __init__(self, bins: dict[str, Path], workdir: Path, netns: NetNamespace) -> None:
        self.bins, self.dir, self.netns = bins, workdir, netns
        self.url = ""
        self._stack = ExitStack()
        self._names = itertools.count(1)

    def namespace(self, prefix: str = "ml") -> str:
        """A fresh namespace: each test gets its own, on the one control plane."""
        name = f"{prefix}-{next(self._names)}"
        self.admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the stack
        self._stack.callback(log.close)
        command = self.netns.command(str(self.bins[name]), *args)
        proc = subprocess.Popen(command, stdout=log, stderr=log)
        self._stack.callback(_stop, proc)
        return proc

    def _wait(self, name: str, proc: subprocess.Popen, ready: Callable[[], bool],
              timeout: float = 60) -> None:  # fmt: skip
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)

    def __enter__(self) -> "ControlPlane":
        try:
            self._boot()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _boot(self) -> None:
        d = self.dir
        (d / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
        subprocess.run(["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"], check=True,
                       capture_output=True)  # fmt: skip
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        # All three run in the namespace; the tests reach etcd and the API server by relays.
        self.netns.relay(etcd_port)
        self.netns.relay(api_port)
        etcd = self._start("etcd", [
            f"--data-dir={d / 'etcd'}", f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",  # a test's data: speed over durability
        ])  # fmt: skip
        plain = urllib3.PoolManager()
        self._wait("etcd", etcd, partial(_answers, plain, f"http://127.0.0.1:{etcd_port}/health"))
        self.url = f"https://127.0.0.1:{api_port}"
        apiserver = self._start("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}", f"--secure-port={api_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--cert-dir={d / 'certs'}", f"--token-auth-file={d / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={d / 'sa.key'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
        ])  # fmt: skip
        self.ca = d / "certs" / "apiserver.crt"  # self-signed, with its CA, by the server
        self.admin = Admin(self.url, self.ca)
        ready = partial(_answers, self.admin.http, f"{self.url}/readyz", self.admin.headers)
        self._wait("kube-apiserver", apiserver, ready, timeout=120)
        kubeconfig = d / "admin.kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "admin",
            "clusters": [{"name": "test", "cluster": {"server": self.url,
                                                      "certificate-authority": str(self.ca)}}],
            "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
            "contexts": [{"name": "admin", "context": {"cluster": "test", "user": "admin"}}],
        }))  # fmt: skip
        # No health endpoint without a serving port: the tests wait for what it does.
        self._start("kube-controller-manager", [
            f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0",
            "--controllers=deployment,replicaset,horizontalpodautoscaling,garbagecollector,serviceaccount",
            "--horizontal-pod-autoscaler-sync-period=1s",
        ])  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _answers(http: urllib3.PoolManager, url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return http.request("GET", url, headers=headers, timeout=2, retries=False).status == 200
    except (urllib3.exceptions.HTTPError, OSError):  # OSError: no certificate yet
        return False


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
