import asyncio

import numpy as np
import pytest

from mlscale.service.runtime.batching import Batcher, BatchObserver


class Recorder(BatchObserver):
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def batch(self, requests: int, rows: int, queue_seconds: list[float]) -> None:
        assert len(queue_seconds) == requests and min(queue_seconds) >= 0
        self.batches.append((requests, rows))


def model(x: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
    every = {"sum": lambda: x.sum(axis=1), "double": lambda: x * 2}
    return {name: every[name]() for name in names or every}


ALL = ["sum", "double"]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_merge_and_split_back_exactly():
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(int(rng.integers(1, 5)), 3)) for _ in range(40)]

    async def main() -> tuple[list, Recorder]:
        recorder = Recorder()
        batcher = Batcher(model, max_size=1000, max_wait_s=0, observer=recorder)
        results = await asyncio.gather(*(batcher.submit(x, ALL) for x in inputs))
        await batcher.close()
        return results, recorder

    results, recorder = run(main())
    for x, got in zip(inputs, results, strict=True):
        alone = model(x)
        for key in alone:
            np.testing.assert_array_equal(got[key], alone[key])
    assert sum(r for r, _ in recorder.batches) == 40
    assert len(recorder.batches) < 40  # they really were merged


def test_batches_never_exceed_max_size_rows():
    async def main() -> Recorder:
        recorder = Recorder()
        batcher = Batcher(model, max_size=8, max_wait_s=0, observer=recorder)
        await asyncio.gather(*(batcher.submit(np.ones((3, 2)), ALL) for _ in range(10)))
        await batcher.close()
        return recorder

    recorder = run(main())
    assert all(rows <= 8 for _, rows in recorder.batches)
    assert sum(rows for _, rows in recorder.batches) == 30


def test_oversized_request_goes_alone():
    async def main() -> dict:
        batcher = Batcher(model, max_size=4, max_wait_s=0)
        out = await batcher.submit(np.ones((10, 2)), ALL)
        await batcher.close()
        return out

    assert run(main())["sum"].tolist() == [2.0] * 10


def test_max_wait_gathers_requests_that_arrive_later():
    async def main() -> Recorder:
        recorder = Recorder()
        batcher = Batcher(model, max_size=100, max_wait_s=0.2, observer=recorder)

        async def late(delay: float) -> None:
            await asyncio.sleep(delay)
            await batcher.submit(np.ones((1, 2)), ALL)

        await asyncio.gather(late(0), late(0.01), late(0.02))
        await batcher.close()
        return recorder

    assert run(main()).batches == [(3, 3)]


def test_a_failing_model_fails_its_batch_and_the_batcher_survives():
    calls = 0

    def flaky(x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return model(x, names)

    async def main() -> dict:
        batcher = Batcher(flaky, max_size=10, max_wait_s=0)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(np.ones((1, 2)), ALL)
        out = await batcher.submit(np.ones((1, 2)), ALL)
        await batcher.close()
        return out

    assert run(main())["sum"].tolist() == [2.0]


def test_a_request_the_model_refuses_fails_alone_not_its_batch():
    """A row the model raises on (an unknown category, say) failed every request merged with
    it: a batch that raises is predicted again request by request."""

    def refuses_negatives(x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        if (x < 0).any():
            raise ValueError("negative")
        return model(x, names)

    async def main() -> tuple[list, Recorder]:
        recorder = Recorder()
        batcher = Batcher(refuses_negatives, max_size=100, max_wait_s=0, observer=recorder)
        rows = [np.full((1, 2), -1.0 if i in (2, 5) else float(i)) for i in range(8)]
        results = await asyncio.gather(*(batcher.submit(x, ["sum"]) for x in rows),
                                       return_exceptions=True)  # fmt: skip
        await batcher.close()
        return results, recorder

    results, recorder = run(main())
    refused = [i for i, r in enumerate(results) if isinstance(r, ValueError)]
    assert refused == [2, 5]
    assert [r["sum"].tolist() for r in results if isinstance(r, dict)] == [
        [2.0 * i] for i in (0, 1, 3, 4, 6, 7)
    ]
    assert recorder.batches == [(1, 1)] * 6  # the answered ones, each alone


def test_a_batch_computes_the_outputs_its_requests_asked_for_once():
    """A slow model's outputs each cost a call: a batch asks for the union of what its requests
    want, in one call, and each request gets what it asked for; a lone request, only its own."""
    asked: list[list[str]] = []

    def recording(x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        asked.append(names)
        return model(x, names)

    async def main(wants: list[list[str]]) -> list[dict]:
        batcher = Batcher(recording, max_size=100, max_wait_s=0)
        out = await asyncio.gather(*(batcher.submit(np.ones((1, 2)), w) for w in wants))
        await batcher.close()
        return out

    results = run(main([["sum"], ["sum"], ["double"], ["sum"]]))
    assert asked == [["sum", "double"]]
    assert all("sum" in r for r in results[:2]) and "double" in results[2]
    asked.clear()
    run(main([["sum"]]))
    assert asked == [["sum"]]
