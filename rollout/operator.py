"""`mlscale operator` (in the image: `python -m mlscale.rollout.operator`): the rollout
controller. It watches the ModelRollouts of its namespace and reconciles each one on every
change and again when the reconcile asks (every second while pods move, every 30 s at rest),
one at a time. Of several replicas only the holder of a coordination.k8s.io Lease acts.

Built on the official client's watch and its leader election (LeaseLock), with a small work
queue of our own, rather than kopf: kopf elects a leader with its own peering resources, not a
Lease, and keeps progress in annotations of its own, where ours lives in the resource's status.
"""

import functools
import heapq
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import typer
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mlscale.rollout import options
from mlscale.rollout.kube import ClusterError, Kube, NotFound, Target
from mlscale.rollout.reconcile import RESYNC, Reconciler
from mlscale.rollout.resource import GROUP, PHASES, PLURAL, VERSION
from mlscale.service.contract import PROG_ENV

log = logging.getLogger("mlscale.operator")
BACKOFF_MAX = 30.0  # seconds: the longest wait before retrying a reconcile that failed


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter("mlscale_operator_reconciles_total", "Reconciles, by result "
                                  "(ok, error)", ["result"], registry=self.registry)  # fmt: skip
        self.rollouts = Counter("mlscale_operator_rollouts_total", "Rollouts ended, by outcome",
                                ["outcome"], registry=self.registry)  # fmt: skip
        self.phase = Gauge("mlscale_operator_rollout_phase", "1 for each ModelRollout's phase",
                           ["rollout", "phase"], registry=self.registry)  # fmt: skip
        self.leader = Gauge("mlscale_operator_leader", "1 while this replica holds the Lease",
                            registry=self.registry)  # fmt: skip

    def observe(self, name: str, phase: str | None, ended: list[str]) -> None:
        """A rollout's phase now, and the outcomes of the rollouts that ended since."""
        for p in PHASES:
            self.phase.labels(name, p).set(1 if p == phase else 0)
        for outcome in ended:
            self.rollouts.labels(outcome).inc()


class Queue:
    """Names of rollouts to reconcile, each due at a time; a name is queued once, at its
    earliest due time."""

    def __init__(self) -> None:
        self.due: dict[str, float] = {}
        self.heap: list[tuple[float, str]] = []
        self.ready = threading.Condition()

    def add(self, name: str, after: float = 0.0) -> None:
        at = time.monotonic() + after
        with self.ready:
            if name in self.due and self.due[name] <= at:
                return
            self.due[name] = at
            heapq.heappush(self.heap, (at, name))
            self.ready.notify()

    def get(self, timeout: float) -> str | None:
        """The next name whose time has come, waiting up to `timeout` seconds for one."""
        deadline = time.monotonic() + timeout
        with self.ready:
            while True:
                while self.heap and self.due.get(self.heap[0][1]) != self.heap[0][0]:
                    heapq.heappop(self.heap)  # superseded by an earlier entry
                now = time.monotonic()
                if self.heap and self.heap[0][0] <= now:
                    _, name = heapq.heappop(self.heap)
                    del self.due[name]
                    return name
                wait = min(deadline, self.heap[0][0] if self.heap else deadline) - now
                if now >= deadline:
                    return None
                self.ready.wait(max(wait, 0.0))


class Controller:
    def __init__(self, kube: Kube, identity: str, metrics: Metrics) -> None:
        self.kube, self.metrics = kube, metrics
        self.reconciler = Reconciler(kube, identity)
        self.queue = Queue()
        self.failures: dict[str, int] = {}
        self.synced = threading.Event()  # the first list of ModelRollouts answered
        self.tick = time.monotonic()  # the work loop's last turn (liveness)
        self.leading = False
        self.stopping = threading.Event()  # SIGTERM: finish the reconcile at hand, then end
        self.lister = functools.partial(
            kube.custom.list_namespaced_custom_object, GROUP, VERSION, kube.namespace, PLURAL
        )

    def run(self, release: Callable[[], None]) -> None:
        """Lead: watch in a thread, work in this one, until the process ends; once stopping,
        after the reconcile at hand, `release` the Lease and end the process."""
        log.info("leading: reconciling ModelRollouts in %s", self.kube.namespace)
        self.leading = True
        self.metrics.leader.set(1)
        threading.Thread(target=self.watch, daemon=True, name="watch").start()
        while not self.stopping.is_set():
            self.tick = time.monotonic()
            if (name := self.queue.get(timeout=1.0)) is not None:
                self.reconcile(name)
        release()
        # Now, from this thread: the election's loop would renew the Lease given up.
        logging.shutdown()
        os._exit(0)

    def watch(self) -> None:
        while True:
            try:
                for obj in self.kube.watch(self.lister, "modelrollouts", timeout=None):
                    self.synced.set()
                    if obj is not None:
                        self.queue.add(obj["metadata"]["name"])
            except ClusterError as exc:  # e.g. 403, or the CRD not installed: say so, retry
                log.error("cannot watch ModelRollouts: %s", exc)
                time.sleep(5)

    def reconcile(self, name: str) -> None:
        kube = self.kube
        try:
            obj = kube.call(kube.custom.get_namespaced_custom_object, GROUP, VERSION,
                            kube.namespace, PLURAL, name)  # fmt: skip
        except NotFound:
            self.failures.pop(name, None)
            return  # deleted: its Deployments stay as they are
        except ClusterError as exc:
            return self._failed(name, exc)
        ended_before = len((obj.get("status") or {}).get("history") or [])
        try:
            after, status = self.reconciler.reconcile(obj)
        except ClusterError as exc:  # the API server: back off, then carry on from the status
            return self._failed(name, exc)
        except Exception:  # a bug: say it loudly, keep the other rollouts going
            log.exception("reconcile of %s failed", name)
            return self._failed(name, None)
        self.metrics.reconciles.labels("ok").inc()
        self.failures.pop(name, None)
        ended = status.get("history", [])[ended_before:]
        self.metrics.observe(name, status.get("phase"), [e["outcome"] for e in ended])
        self.queue.add(name, min(after, RESYNC))

    def _failed(self, name: str, exc: Exception | None) -> None:
        self.metrics.reconciles.labels("error").inc()
        n = self.failures[name] = self.failures.get(name, 0) + 1
        delay = min(BACKOFF_MAX, 0.2 * 2 ** (n - 1))
        if exc is not None:
            log.warning("reconcile of %s: %s; retrying in %.0f s", name, exc, delay)
        self.queue.add(name, delay)


def release(kube: Kube, lease: str, me: str) -> None:
    """Give the Lease up (no holder), so a standby or the next pod leads at its next look
    instead of once the Lease runs out. The replace carries the read's resourceVersion, so a
    renewal in flight makes it fail rather than be overwritten: the Lease then runs out."""
    try:
        current = kube.call(kube.coordination.read_namespaced_lease, lease, kube.namespace)
        if current.spec.holder_identity != me:
            return
        current.spec.holder_identity = None
        kube.call(kube.coordination.replace_namespaced_lease, lease, kube.namespace, current)
        log.info("gave the Lease %s up", lease)
    except ClusterError as exc:
        log.warning("could not give the Lease %s up (%s): it runs out by itself", lease, exc)


def stop_on_sigterm(controller: Controller) -> None:
    """SIGTERM (the operator's own rollout, a drain): a follower exits at once; the leader
    finishes the reconcile at hand, gives the Lease up and exits (Controller.run), renewing
    the Lease until then. Exit code 0 either way."""

    def stop(signum: int, frame: Any) -> None:
        if not controller.leading:
            log.info("SIGTERM: not leading; exiting")
            sys.exit(0)
        log.info("SIGTERM: stopping after the reconcile at hand")
        controller.stopping.set()

    signal.signal(signal.SIGTERM, stop)


class Timed:
    """The client's Lease calls, each with a timeout: a renewal that hangs must fail (and the
    process with it), not leave a leader acting on a Lease it no longer renews."""

    def __init__(self, api: Any, timeout: float) -> None:
        self.api, self.timeout = api, timeout

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self.api, name), _request_timeout=self.timeout)


def serve_health(port: int, controller: Controller, metrics: Metrics) -> ThreadingHTTPServer:
    """/metrics, /healthz (the work loop turns, or this replica waits to lead) and /readyz
    (the API server answered)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                stuck = controller.leading and time.monotonic() - controller.tick > 60
                self._send(500 if stuck else 200, b"stuck\n" if stuck else b"ok\n")
            elif self.path == "/readyz":
                ok = controller.synced.is_set() or not controller.leading
                self._send(200 if ok else 503, b"ok\n" if ok else b"not synced\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # probes every few seconds: no access log
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="health").start()
    return server


app = typer.Typer(add_completion=False)


@app.command()
def operator(
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            "-n",
            help="Namespace to reconcile (default: the pod's, else the context's, else mlscale).",
        ),
    ] = None,
    context: options.Context = None,
    kubeconfig: options.Kubeconfig = None,
    server: options.Server = None,
    identity: Annotated[
        str | None,
        typer.Option(
            help="This replica's name in the Lease (default: POD_NAME, else the host name)."
        ),
    ] = None,
    lease: Annotated[str, typer.Option(help="Name of the Lease replicas elect a leader on.")] = (
        "mlscale-operator"
    ),
    lease_seconds: Annotated[
        int, typer.Option(min=3, help="Lease duration: a dead leader's successor acts after it.")
    ] = 15,
    port: Annotated[int, typer.Option(help="Port of /metrics, /healthz and /readyz.")] = 8081,
    api_timeout: Annotated[
        float, typer.Option(help="Seconds any one call (API server, pod proxy) may take.")
    ] = 10,
) -> None:
    """Run the rollout controller: reconcile the ModelRollouts of a namespace.

    In the cluster the chart runs it (operator.enabled); outside, for development:
      mlscale operator --context kind-mlscale -n mlscale
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("leaderelection").setLevel(logging.WARNING)  # it logs every renewal
    kube = Kube(Target(namespace, context, kubeconfig, server, timeout=api_timeout))
    me = identity or os.environ.get("POD_NAME") or socket.gethostname()
    metrics = Metrics()
    controller = Controller(kube, me, metrics)
    serve_health(port, controller, metrics)
    lock = LeaseLock(lease, kube.namespace, me)
    lock.api_instance = Timed(kube.coordination, kube.timeout)
    renew = max(1, lease_seconds * 2 // 3)
    config = electionconfig.Config(
        lock,
        lease_duration=lease_seconds,
        renew_deadline=renew,
        retry_period=max(1, renew // 2 - 1) if renew > 2 else 1,
        onstarted_leading=functools.partial(controller.run, lambda: release(kube, lease, me)),
        onstopped_leading=lambda: log.error("lost the Lease %s: stopping", lease),
    )
    stop_on_sigterm(controller)
    log.info("%s: waiting to lead on Lease %s/%s", me, kube.namespace, lease)
    leaderelection.LeaderElection(config).run()
    sys.exit(1)  # leadership lost: the Deployment starts this replica again, as a follower


if __name__ == "__main__":
    app(prog_name=os.environ.pop(PROG_ENV, "python -m mlscale.rollout.operator"))
