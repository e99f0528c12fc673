"""Adaptive batching: merge concurrent requests into one `predict` call.

A batch starts when a request arrives. Before running it, the batcher yields to the event loop
once, so every request whose bytes already arrived joins; with `max_wait` > 0 it also waits up
to that long for more. It flushes at `max_size` rows. While a batch runs, new requests queue
up and form the next one, so batches grow with load and stay at one row when idle: throughput
rises without adding latency at low traffic.

A batch the model raises on is predicted again request by request, so that a request whose
rows the model refuses (an unknown category, say) fails alone, not with the requests it was
merged with.
"""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mlscale.service.runtime.model import Outputs


@dataclass
class _Pending:
    x: Any  # rows: a float64 array, or a DataFrame
    outputs: list[str]
    future: asyncio.Future[Outputs]
    queued_at: float


class BatchObserver(Protocol):
    """What the batcher reports; `metrics.Metrics` is the real one."""

    def batch(self, requests: int, rows: int, queue_seconds: list[float]) -> None: ...


class _Unobserved:
    def batch(self, requests: int, rows: int, queue_seconds: list[float]) -> None:
        return None


class Batcher:
    def __init__(
        self,
        predict: Callable[[Any, list[str]], Outputs],
        *,
        max_size: int,
        max_wait_s: float,
        observer: BatchObserver | None = None,
        concat: Callable[[Sequence[Any]], Any] = np.concatenate,
    ) -> None:
        self._predict = predict
        self._concat = concat
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._observer = observer or _Unobserved()
        self._queue: deque[_Pending] = deque()
        self._rows = 0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, x: Any, outputs: list[str]) -> Outputs:
        """Predict `outputs` for `x` (rows by features) as part of a batch; returns this
        request's rows only. A batch computes the outputs any of its requests asked for."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="batcher")
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(x, outputs, future, time.perf_counter()))
        self._rows += len(x)
        self._arrived.set()
        if self._rows >= self._max_size:
            self._full.set()
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._queue:
                await asyncio.sleep(0)  # let requests that are already readable join
                if self._max_wait_s and self._rows < self._max_size:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._max_wait_s)
                self._flush(self._take())

    def _take(self) -> list[_Pending]:
        """Up to max_size rows, whole requests only (one oversized request goes alone)."""
        batch = [self._queue.popleft()]
        rows = len(batch[0].x)
        while self._queue and rows + len(self._queue[0].x) <= self._max_size:
            item = self._queue.popleft()
            batch.append(item)
            rows += len(item.x)
        self._rows -= rows
        return batch

    def _flush(self, batch: list[_Pending]) -> None:
        start = time.perf_counter()
        batch = [p for p in batch if not p.future.done()]  # the client may have gone away
        if not batch:
            return
        try:
            x = batch[0].x if len(batch) == 1 else self._concat([p.x for p in batch])
            names = list(dict.fromkeys(name for p in batch for name in p.outputs))
            outputs = self._predict(x, names)
        except Exception as exc:
            if len(batch) > 1:  # one request's rows can make a model raise: only it fails
                for p in batch:
                    self._flush([p])
                return
            batch[0].future.set_exception(exc)
            return
        offset = 0
        for p in batch:
            end = offset + len(p.x)
            p.future.set_result({name: value[offset:end] for name, value in outputs.items()})
            offset = end
        self._observer.batch(len(batch), len(x), [start - p.queued_at for p in batch])
