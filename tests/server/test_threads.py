"""Engine threads per batch-size bucket, chosen by timing interleaved steps (server/threads.py)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from decoding import Engine, SamplingParams, SpecParams
from server.service import EngineService
from server.threads import ThreadTuner


@pytest.fixture
def set_threads(monkeypatch) -> list[int]:
    """Record torch.set_num_threads calls instead of changing the test process's threads."""
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    return calls


def seconds_per_token(threads: int, rows: int) -> float:
    """Synthetic: 2 threads lose 10% below 8 rows (overhead-bound) and win 25% from 8 on."""
    if threads == 1:
        return 1e-3
    return 1.1e-3 if rows < 8 else 0.75e-3


def drive(tuner: ThreadTuner, rows: int, steps: int, cost=seconds_per_token) -> list[int]:
    chosen = []
    for _ in range(steps):
        t = tuner.choose(rows)
        tuner.observe(cost(t, rows) * rows, rows)
        chosen.append(t)
    return chosen


def test_small_batches_keep_one_thread_large_ones_take_two(set_threads):
    tuner = ThreadTuner((1, 2), trials=4, recheck=1000)
    small, large = drive(tuner, 2, 200), drive(tuner, 32, 200)
    assert small[:8].count(1) == small[:8].count(2) == 4  # the trials interleave
    assert set(small[8:]) == {1} and set(large[8:]) == {2}
    assert tuner.buckets[2].choice == 1 and tuner.buckets[6].choice == 2  # rows 2-3, 32-63
    assert set_threads[-1] == 2 == tuner.current
    # a set only when the count changes: 8 trial switches per bucket at most, then one more
    assert len(set_threads) <= 2 * 8 + 2


def test_steps_that_ran_a_prefill_do_not_count(set_threads):
    tuner = ThreadTuner((1, 2), trials=2)
    for _ in range(20):  # prefill steps (tokens=0) where 2 threads look 100x faster: ignored
        t = tuner.choose(16)
        tuner.observe(1e-5 if t == 2 else 1e-3, 0)
    assert tuner.buckets[5].choice is None
    drive(tuner, 16, 4, cost=lambda t, rows: 1e-3 if t == 1 else 2e-3)
    assert tuner.buckets[5].choice == 1


def test_a_choice_is_checked_again_and_follows_a_change(set_threads):
    tuner = ThreadTuner((1, 2), trials=2, recheck=50)
    drive(tuner, 16, 30)
    assert tuner.buckets[5].choice == 2
    slower_now = lambda t, rows: 2e-3 if t == 2 else 1e-3  # noqa: E731 (e.g. clients took the core)
    chosen = drive(tuner, 16, 120, cost=slower_now)
    assert tuner.buckets[5].choice == 1
    assert chosen.count(2) <= 50 + 2  # the old choice holds until its re-check, then 2 trials


def test_fixed_threads_and_no_threads(set_threads):
    fixed = ThreadTuner((3,))
    assert set(drive(fixed, 32, 20)) == {3} and set_threads == [3] and not fixed.buckets[6].samples[3]
    gpu = ThreadTuner(())
    gpu.choose(32)
    gpu.observe(1.0, 32)
    assert set_threads == [3] and not gpu.buckets


def test_the_service_times_decode_steps_per_token_fed(tiny, set_threads):
    """The engine loop asks for threads by rows before each step and reports decode steps with
    the tokens their forwards fed; a step that prefilled reports nothing (tokens=0)."""
    calls: list[tuple[str, int]] = []

    class Spy(ThreadTuner):
        def choose(self, rows: int) -> int:
            calls.append(("choose", rows))
            return 1

        def observe(self, seconds: float, tokens: int) -> None:
            assert seconds > 0
            calls.append(("observe", tokens))

    engine = Engine(tiny["target"].model, max_batch_size=4)
    service = EngineService(engine, max_waiting=4, tuner=Spy((1, 2)))

    async def run() -> None:
        sampling = SamplingParams(max_new_tokens=4, ignore_eos=True)
        rows = [
            engine.make_row(p, sampling, SpecParams("none"), request_id=str(i))
            for i, p in enumerate([[5, 6, 7], [3, 4], [8]])
        ]
        queues = [service.submit(r) for r in rows]
        service.start()
        try:
            for q in queues:
                while (await asyncio.wait_for(q.get(), 30)).row is None:
                    pass
        finally:
            service.stop()

    asyncio.run(run())
    # a step that prefilled and decoded (tokens 1-2: not timed), then 2 decode steps feeding
    # 1 token a row (tokens 3 and 4)
    assert calls == [("choose", 3), ("observe", 0)] + [("choose", 3), ("observe", 3)] * 2
