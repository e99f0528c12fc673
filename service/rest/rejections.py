"""Rejected requests in the log: one line each, like an access log that only writes errors.

The server keeps no access log (it costs ~10% of throughput, and `/metrics` counts every
request), so without this a client's 400s would leave no trace of what was wrong. A client
that sends nothing but bad requests must not flood the log either: lines are rate-limited by
a token bucket, and the next line that gets through says how many were left out.
"""

import logging
from time import monotonic

from starlette.types import Scope

log = logging.getLogger("mlscale")


class RejectionLog:
    def __init__(self, per_second: float) -> None:
        self.per_second = per_second  # also the burst: a second's worth of lines at once
        self._tokens = per_second
        self._last = monotonic()
        self.left_out = 0

    def __call__(self, scope: Scope, status: int, reason: str) -> None:
        if not self.per_second:
            return
        now = monotonic()
        self._tokens = min(self.per_second, self._tokens + (now - self._last) * self.per_second)
        self._last = now
        if self._tokens < 1:
            self.left_out += 1
            return
        self._tokens -= 1
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "-"
        more = f" ({self.left_out} more rejections not logged)" if self.left_out else ""
        self.left_out = 0
        level = logging.WARNING if status >= 500 else logging.INFO
        log.log(level, '%s "%s %s" %d %s%s', peer, scope["method"], scope["path"], status,
                reason, more)  # fmt: skip
