"""Talking to the API server through the official client: configuration, typed errors,
conflict retries on a fresh read, a timeout on every call, and a watch that survives 410 Gone
and dropped or half-open connections."""

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")


class RolloutError(Exception):
    """A rollout could not be done; the message says why and what to do."""

    exit_code = 1


class Refused(RolloutError):
    """Refused before changing anything (unknown version, quality gate, bad arguments)."""

    exit_code = 2


class ClusterError(RolloutError):
    """The API server could not be reached, or refused a call."""

    exit_code = 3


class NotFound(ClusterError):
    """404: the object is not there."""


class Conflict(ClusterError):
    """409: the object changed since it was read (or already exists); read again."""


class Forbidden(ClusterError):
    """401/403: the credentials may not do this (see k8s/rollout-rbac.yaml)."""


class Unavailable(ClusterError):
    """No answer in time, a connection error, 429 or 5xx: the API server or a pod is busy."""


def translate(exc: Exception, what: str) -> ClusterError:
    """The one place a client failure becomes a typed, readable error."""
    if isinstance(exc, ApiException):
        kind: type[ClusterError] = {404: NotFound, 409: Conflict, 401: Forbidden,
                                    403: Forbidden}.get(exc.status or 0, Unavailable)  # fmt: skip
        if kind is Unavailable and exc.status and exc.status < 500 and exc.status != 429:
            kind = ClusterError
        return kind(f"{what}: {exc.status} {exc.reason}")
    return Unavailable(f"{what}: cannot reach the API server ({exc})")


DEFAULT_NAMESPACE = "mlscale"


@dataclass(frozen=True)
class Target:
    """Where the release lives. `namespace` None means the kubeconfig context's namespace
    (else mlscale); `host` set means talk to that URL directly (tests, proxies)."""

    namespace: str | None = None
    context: str | None = None
    kubeconfig: str | None = None
    host: str | None = None
    timeout: float = 30.0  # seconds for any one call to connect and answer


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def connect(target: Target) -> tuple[client.ApiClient, str]:
    """An API client and the namespace to use: explicit flags first, then the kubeconfig
    (KUBECONFIG or ~/.kube/config), then the pod's service account."""
    if target.host:
        configuration = client.Configuration()
        configuration.host = target.host
        return client.ApiClient(configuration), target.namespace or DEFAULT_NAMESPACE
    explicit = target.kubeconfig or target.context
    kubeconfig = (
        target.kubeconfig or os.environ.get("KUBECONFIG") or config.KUBE_CONFIG_DEFAULT_LOCATION
    )
    if (
        explicit
        or not _in_cluster()
        or os.path.exists(os.path.expanduser(kubeconfig.split(":")[0]))
    ):
        try:
            contexts, active = config.list_kube_config_contexts(config_file=target.kubeconfig)
            chosen = next((c for c in contexts if c["name"] == target.context), active)
            api = config.new_client_from_config(
                config_file=target.kubeconfig, context=target.context
            )
        except (config.ConfigException, FileNotFoundError) as exc:
            if explicit or not _in_cluster():
                raise ClusterError(
                    f"no cluster configured ({exc}); set KUBECONFIG or pass --kubeconfig/--context"
                ) from None
        else:
            namespace = (chosen or {}).get("context", {}).get("namespace")
            return api, target.namespace or namespace or DEFAULT_NAMESPACE
    config.load_incluster_config()
    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
        return client.ApiClient(), target.namespace or f.read().strip()


class Kube:
    def __init__(self, target: Target) -> None:
        api, self.namespace = connect(target)
        self.timeout = target.timeout
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.coordination = client.CoordinationV1Api(api)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API call with a client-side timeout; its failures raised as typed errors."""
        kwargs.setdefault("_request_timeout", self.timeout)
        try:
            return fn(*args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            # e.g. "read deployment web ml": the operation and the names it was given
            what = fn.__name__.replace("_namespaced_", " ").replace("_", " ")
            names = " ".join(a for a in args if isinstance(a, str))
            raise translate(exc, f"{what} {names}".strip()) from None

    def retry_on_conflict(self, attempt: Callable[[], T], tries: int = 5) -> T:
        """Run a read-modify-write; on 409 Conflict read again and retry. Nothing else is
        retried: a missing object or a refusal is not going to change by itself."""
        for n in range(tries):
            try:
                return attempt()
            except Conflict:
                if n == tries - 1:
                    raise Conflict(f"gave up after {tries} conflicting writes") from None
                time.sleep(0.05 * 2**n)
        raise AssertionError("unreachable")

    def watch(
        self, lister: Callable[..., Any], what: str, timeout: float | None, field: str | None = None
    ) -> Iterator[Any]:
        """What `lister` lists now, one object at a time, then every change to it, until
        `timeout` seconds have passed (None: for ever). Objects are the client's models, or
        plain dicts from the custom objects API.

        Lists first and watches from the list's resourceVersion; a 410 Gone (history
        compacted) or a dropped connection means: list again and carry on, backing off.
        With a field selector (one named object) an empty list is NotFound.
        """
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        selector = {"field_selector": field} if field else {}
        backoff = 0.1
        while time.monotonic() < deadline:
            try:
                listed = lister(**selector, _request_timeout=self.timeout)
                items = listed["items"] if isinstance(listed, dict) else listed.items
                if field and not items:
                    raise NotFound(f"{what} not found in {self.namespace}")
                yield from items
                version = resource_version(listed)
                while time.monotonic() < deadline:
                    window = int(max(1, min(5, deadline - time.monotonic())))
                    for event in watch.Watch().stream(
                        lister,
                        **selector,
                        resource_version=version,
                        timeout_seconds=window,
                        allow_watch_bookmarks=True,
                        # The server ends the watch after `window`; silence past that, by
                        # a call's timeout (at most 10 s), is a half-open connection: give
                        # up on it and list again.
                        _request_timeout=(self.timeout, window + min(10, self.timeout)),
                    ):
                        if event["type"] == "BOOKMARK":  # progress only, and a plain dict
                            version = event["raw_object"]["metadata"]["resourceVersion"]
                            continue
                        version = resource_version(event["object"])
                        yield event["object"]
                    yield None  # a quiet window: lets the caller look at pods and the clock
                backoff = 0.1
            except ApiException as exc:
                if exc.status != 410:
                    raise translate(exc, f"watching {what}") from None
            except (urllib3.exceptions.HTTPError, OSError):
                time.sleep(backoff)
                backoff = min(backoff * 2, 5)


def resource_version(obj: Any) -> str | None:
    """metadata.resourceVersion of a client model or a plain dict."""
    if isinstance(obj, dict):
        return obj.get("metadata", {}).get("resourceVersion")
    return obj.metadata.resource_version if obj.metadata else None
