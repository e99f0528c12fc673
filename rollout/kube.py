"""Talking to the API server through the official client: configuration, typed errors,
conflict retries on a fresh read, and a watch that survives 410 Gone and dropped connections."""

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


@dataclass(frozen=True)
class Target:
    """Where the release lives; `host` set means talk to that URL directly (tests, proxies)."""

    namespace: str = "mlscale"
    context: str | None = None
    kubeconfig: str | None = None
    host: str | None = None


class Kube:
    def __init__(self, target: Target) -> None:
        self.namespace = target.namespace
        if target.host:
            configuration = client.Configuration()
            configuration.host = target.host
            api = client.ApiClient(configuration)
        else:
            try:
                config.load_incluster_config()
                api = client.ApiClient()
            except config.ConfigException:
                try:
                    api = config.new_client_from_config(
                        config_file=target.kubeconfig, context=target.context
                    )
                except (config.ConfigException, FileNotFoundError) as exc:
                    raise ClusterError(
                        f"no cluster configured ({exc}); set KUBECONFIG or pass --kubeconfig"
                    ) from None
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API call, its failures turned into ClusterError with a readable message."""
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 409:
                raise
            raise ClusterError(f"{fn.__name__}: {exc.status} {exc.reason}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise ClusterError(f"cannot reach the API server: {exc}") from None

    def retry_on_conflict(self, attempt: Callable[[], T], tries: int = 5) -> T:
        """Run a read-modify-write; on 409 Conflict read again and retry."""
        for n in range(tries):
            try:
                return attempt()
            except ApiException as exc:
                if exc.status != 409 or n == tries - 1:
                    raise ClusterError(f"gave up after {n + 1} conflicting writes") from None
                time.sleep(0.05 * 2**n)
        raise AssertionError("unreachable")

    def watch_deployment(self, name: str, timeout: float) -> Iterator[Any]:
        """The Deployment now, then every change to it, until `timeout` seconds have passed.

        Lists first and watches from the list's resourceVersion; a 410 Gone (history
        compacted) or a dropped connection means: list again and carry on, backing off.
        """
        deadline = time.monotonic() + timeout
        field = f"metadata.name={name}"
        backoff = 0.1
        while time.monotonic() < deadline:
            try:
                listed = self.apps.list_namespaced_deployment(self.namespace, field_selector=field)
                if not listed.items:
                    raise ClusterError(f"deployment {name} not found in {self.namespace}")
                yield listed.items[0]
                version = listed.metadata.resource_version
                while time.monotonic() < deadline:
                    window = max(1, min(5, int(deadline - time.monotonic())))
                    for event in watch.Watch().stream(
                        self.apps.list_namespaced_deployment,
                        self.namespace,
                        field_selector=field,
                        resource_version=version,
                        timeout_seconds=window,
                    ):
                        version = event["object"].metadata.resource_version
                        yield event["object"]
                    yield None  # a quiet window: lets the caller look at pods and the clock
                backoff = 0.1
            except ApiException as exc:
                if exc.status != 410:
                    raise ClusterError(f"watching {name}: {exc.status} {exc.reason}") from None
            except (urllib3.exceptions.HTTPError, ConnectionError):
                time.sleep(backoff)
                backoff = min(backoff * 2, 5)
