"""Draining on SIGTERM, through the server's own signal handling.

Kubernetes sends SIGTERM while endpoints are still being updated. So: readiness turns false at
once, the server keeps answering for `delay` seconds, then the signal is handed to the
handler that was installed before ours (uvicorn's), which stops accepting, lets in-flight
requests finish within its graceful-shutdown timeout, and exits. A second SIGTERM skips the
rest of the delay.
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from mlscale.service.runtime.dataplane import DataPlane

log = logging.getLogger("mlscale")


class DrainOnSigterm:
    def __init__(self, plane: DataPlane, delay_s: float) -> None:
        self._plane = plane
        self._delay_s = delay_s
        self._previous: Callable[[int, FrameType | None], Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handed_over = False

    def install(self) -> None:
        """Chain in front of the running server's SIGTERM handler, if it has one."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):  # no server handling SIGTERM (e.g. an in-process test client)
            return
        self._previous = previous
        self._loop = asyncio.get_running_loop()
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        assert self._loop is not None
        if not self._plane.drain():
            log.info("second SIGTERM: stopping now")
            self._loop.call_soon_threadsafe(self._hand_over)
            return
        log.info("SIGTERM: not ready; serving %.1fs more before stopping", self._delay_s)
        self._loop.call_soon_threadsafe(self._loop.call_later, self._delay_s, self._hand_over)

    def _hand_over(self) -> None:
        if self._handed_over or self._previous is None:
            return
        self._handed_over = True
        signal.signal(signal.SIGTERM, self._previous)
        self._previous(signal.SIGTERM, None)
