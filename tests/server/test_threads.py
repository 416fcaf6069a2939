"""Engine threads per batch-size bucket, chosen by timing interleaved steps (server/threads.py)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from decoding import Engine, SamplingParams, SpecParams
from decoding.stats import Forward, StepStats
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


def step(rows: int, method: str = "none", k: int = 0, phase: str = "decode") -> StepStats:
    """A sub-batch's stats: each row fed 1 token (plain) or K+1 (a verify)."""
    return StepStats(method, phase, rows, k=k, forwards=[Forward("target", [k + 1] * rows, 10)])


def drive(
    tuner: ThreadTuner, rows: int, steps: int, cost=seconds_per_token, kinds=(("none", 0),)
) -> list[int]:
    chosen = []
    for i in range(steps):
        t = tuner.choose(rows)
        method, k = kinds[i % len(kinds)]
        tuner.observe(cost(t, rows) * rows * (k + 1), [step(rows, method, k)])
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
    for _ in range(20):  # steps that prefilled, where 2 threads look 100x faster: ignored
        t = tuner.choose(16)
        tuner.observe(1e-5 if t == 2 else 1e-3, [step(16, phase="prefill"), step(16)])
    assert tuner.buckets[5].choice is None and not tuner.buckets[5].samples
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
    assert set(drive(fixed, 32, 20)) == {3} and set_threads == [3] and not fixed.buckets[6].samples
    gpu = ThreadTuner(())
    gpu.choose(32)
    gpu.observe(1.0, [step(32)])
    assert set_threads == [3] and not gpu.buckets


def test_steps_are_compared_within_their_kind(set_threads):
    """A draft verify feeds K+1 tokens a row at a lower cost per token than a plain step: its
    samples must not be weighed against plain ones. Kinds in runs (as when K holds for a while)
    are each timed on every candidate; kinds that change every step are pooled after a bound."""
    per_token = {("none", 0): 1.0, ("draft", 4): 0.3}

    def cost(threads: int, rows: int, kind=("none", 0)) -> float:
        return per_token[kind] * 1e-3 * (0.8 if threads == 2 else 1.0)

    tuner = ThreadTuner((1, 2), trials=3)
    kinds = [("none", 0)] * 3 + [("draft", 4)] * 3
    for i in range(7):  # 7 steps: neither kind has 3 trials on both candidates yet
        t = tuner.choose(16)
        kind = kinds[i % 6]
        tuner.observe(cost(t, 16, kind) * 16 * (kind[1] + 1), [step(16, *kind)])
    samples = tuner.buckets[5].samples
    assert set(samples) == {(("none", 0),), (("draft", 4),)}
    assert all(x == pytest.approx(per_token[kind[0]] * 1e-3 * (0.8 if t == 2 else 1.0))
               for kind, per in samples.items() for t, xs in per.items() for x in xs)  # fmt: skip
    drive(tuner, 16, 20, cost=lambda t, rows: cost(t, rows))
    assert tuner.buckets[5].choice == 2
    alternating = ThreadTuner((1, 2), trials=3)
    drive(alternating, 16, 4 * 3 * 2, cost=lambda t, rows: cost(t, rows), kinds=[("none", 0), ("draft", 4)])
    assert alternating.buckets[5].choice is not None  # pooled after 4 x trials x candidates probes


def test_the_service_times_decode_steps_per_token_fed(tiny, set_threads):
    """The engine loop asks for threads by rows before each step and reports decode steps with
    the tokens their forwards fed; a step that prefilled reports nothing (tokens=0)."""
    calls: list[tuple[str, int]] = []

    class Spy(ThreadTuner):
        def choose(self, rows: int) -> int:
            calls.append(("choose", rows))
            return 1

        def observe(self, seconds: float, stats: list[StepStats]) -> None:
            assert seconds > 0
            calls.append(
                ("observe", [(s.phase, s.method, sum(sum(f.tokens) for f in s.forwards)) for s in stats])
            )

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
    # a step that prefilled (token 1) and decoded (token 2), then 2 decode steps (tokens 3, 4),
    # each reporting its sub-batches' stats: what the tuner times and what it skips
    prefill = ("prefill", "none", 3 + 2 + 1)
    assert (
        calls
        == [("choose", 3), ("observe", [prefill, ("decode", "none", 3)])]
        + [("choose", 3), ("observe", [("decode", "none", 3)])] * 2
    )
