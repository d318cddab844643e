"""The single-process service's adaptive batching (ktt_core.serving.batching), without HTTP."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ktt_core.serving.batching import MicroBatcher, Overloaded


class SlowModel:
    """Upper-cases texts, taking ``seconds`` per call, and records each call's texts and thread."""

    def __init__(self, seconds: float = 0.05, fail_on: str | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.calls: list[list[str]] = []
        self.threads: set[int] = set()

    def __call__(self, texts: list[str]) -> list[str]:
        self.calls.append(list(texts))
        self.threads.add(threading.get_ident())
        time.sleep(self.seconds)
        if self.fail_on in texts:
            raise ValueError(f"cannot classify {self.fail_on!r}")
        return [t.upper() for t in texts]


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_calls_and_get_their_own_answers():
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch_size=64, max_latency_ms=10_000)

    async def main():
        return await asyncio.gather(*(batcher.submit([f"t{i}", f"u{i}"]) for i in range(40)))

    answers = run(main())
    assert answers == [[f"T{i}", f"U{i}"] for i in range(40)]
    # Requests waiting during a call go into the next one: far fewer calls than requests.
    assert len(model.calls) < 10, [len(c) for c in model.calls]
    assert all(len(call) <= 64 for call in model.calls)
    assert sorted(t for call in model.calls for t in call) == sorted(t for i in range(40) for t in (f"t{i}", f"u{i}"))
    assert len(model.threads) == 1 and threading.get_ident() not in model.threads  # off the event loop


def test_a_lone_request_does_not_wait_for_company():
    model = SlowModel(seconds=0.0)
    batcher = MicroBatcher(model, max_batch_size=64, max_latency_ms=10_000)

    async def main():
        answer = await batcher.submit(["alone"])
        # Had it waited for company, this later request would have shared its call.
        return answer, await batcher.submit(["later"])

    answer, later = run(main())
    assert answer == ["ALONE"] and later == ["LATER"]
    assert model.calls == [["alone"], ["later"]]


def test_batches_keep_whole_requests_within_the_size_and_a_large_request_goes_alone():
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch_size=5, max_latency_ms=10_000)

    async def main():
        first = asyncio.ensure_future(batcher.submit(["a"]))  # occupies the model
        await asyncio.sleep(0.01)
        rest = [batcher.submit(["b", "c", "d"]), batcher.submit(["e", "f", "g"]), batcher.submit(list("hijklmn"))]
        return [await first, *await asyncio.gather(*rest)]

    answers = run(main())
    assert answers == [["A"], ["B", "C", "D"], ["E", "F", "G"], list("HIJKLMN")]
    assert model.calls == [["a"], ["b", "c", "d"], ["e", "f", "g"], list("hijklmn")]


def test_a_failing_call_fails_its_requests_only():
    model = SlowModel(fail_on="bad")
    batcher = MicroBatcher(model, max_batch_size=2, max_latency_ms=10_000)

    async def main():
        first = asyncio.ensure_future(batcher.submit(["x"]))
        await asyncio.sleep(0.01)
        bad = asyncio.ensure_future(batcher.submit(["bad", "y"]))
        later = asyncio.ensure_future(batcher.submit(["z"]))
        return await first, await asyncio.gather(bad, return_exceptions=True), await later

    first, (bad,), later = run(main())
    assert first == ["X"] and later == ["Z"]
    assert isinstance(bad, ValueError) and "bad" in str(bad)


def test_requests_past_the_latency_budget_are_refused_not_queued_forever():
    model = SlowModel(seconds=0.3)
    batcher = MicroBatcher(model, max_batch_size=1, max_latency_ms=100)

    async def main():
        return await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(4)), return_exceptions=True)

    answers = run(main())
    assert answers[0] == ["T0"]
    refused = [a for a in answers if isinstance(a, Overloaded)]
    assert refused and "KTT_MAX_LATENCY_MS" in str(refused[0])
    assert len(model.calls) < 4  # the refused requests never reached the model


def test_a_client_that_went_away_costs_no_model_time():
    model = SlowModel(seconds=0.1)
    batcher = MicroBatcher(model, max_batch_size=64, max_latency_ms=10_000)

    async def main():
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit(["gone"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        kept = await batcher.submit(["kept"])
        return await first, kept

    assert run(main()) == (["FIRST"], ["KEPT"])
    assert ["gone"] not in model.calls and all("gone" not in call for call in model.calls)


@pytest.mark.parametrize("size", [1, 3])
def test_every_text_is_answered_once_under_many_small_requests(size):
    model = SlowModel(seconds=0.001)
    batcher = MicroBatcher(model, max_batch_size=size * 4, max_latency_ms=10_000)

    async def main():
        return await asyncio.gather(*(batcher.submit([f"{i}-{j}" for j in range(size)]) for i in range(200)))

    answers = run(main())
    assert answers == [[f"{i}-{j}" for j in range(size)] for i in range(200)]
    assert sum(len(c) for c in model.calls) == 200 * size
