"""A Gateway API implementation's controller, simulated, for the operator's tests on a real API
server (`tests/control_plane.py`): it reads a namespace's HTTPRoutes as a gateway does and writes
what a gateway writes back, every parent Accepted and ResolvedRefs for the route's generation
(or the condition the test picks), and records the rules of every generation it saw. It
carries no request: the real gateway (Traefik) does that on the kind cluster (test_kind.py).
"""

import threading
import time
from typing import Any

from tests.control_plane import Admin, ApiServerError
from tests.kubelet import stamp

CONTROLLER = "example.net/gateway-controller"


class Gateway:
    """Programs every HTTPRoute of `ns` while running; `refuse` makes it report one condition
    False (e.g. ("Accepted", "NotAllowedByListeners")) for generations from `refuse_from` on."""

    def __init__(self, admin: Admin, ns: str) -> None:
        self.admin, self.ns = admin, ns
        self.refuse: tuple[str, str] | None = None
        self.refuse_from = 1
        self.rules: list[list[dict[str, Any]]] = []  # each generation's, in the order seen
        # and the TraefikServices there were when it was programmed (Traefik reads them too)
        self.traefik_services: list[list[dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Gateway":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                for route in self.admin.list("httproutes", self.ns):
                    self._program(route)
            except ApiServerError:  # changed under us: the next look sees it
                continue

    def _program(self, route: dict[str, Any]) -> None:
        generation = route["metadata"]["generation"]
        seen = (route.get("status") or {}).get("parents") or []
        if seen and all(
            c.get("observedGeneration") == generation for p in seen for c in p["conditions"]
        ):
            return
        self.rules.append(route["spec"]["rules"])
        self.traefik_services.append(self.admin.list("traefikservices", self.ns))
        refused = self.refuse if generation >= self.refuse_from else None
        conditions = []
        for kind in ("Accepted", "ResolvedRefs"):
            ok = refused is None or refused[0] != kind
            reason = kind if ok else refused[1]  # type: ignore[index]
            conditions.append({"type": kind, "status": str(ok), "reason": reason,
                               "message": "" if ok else f"simulated: {reason}",
                               "observedGeneration": generation,
                               "lastTransitionTime": stamp()})  # fmt: skip
        parents = [{"parentRef": ref, "controllerName": CONTROLLER, "conditions": conditions}
                   for ref in route["spec"]["parentRefs"]]  # fmt: skip
        status = {"parents": parents}
        self.admin.patch("httproutes", self.ns, route["metadata"]["name"], {"status": status},
                         sub="status")  # fmt: skip

    def wait_rules(self, condition: Any, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.rules):
            assert time.monotonic() < deadline, f"the route's rules never got there: {self.rules}"
            time.sleep(0.05)
