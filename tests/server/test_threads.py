"""Engine threads per kind of step and batch-size bucket, chosen by timing interleaved steps."""

from __future__ import annotations

import asyncio

import pytest
import torch

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.stats import Forward, StepStats
from specserve.server.service import EngineService
from specserve.server.threads import ThreadTuner


@pytest.fixture
def set_threads(monkeypatch) -> list[int]:
    """Record torch.set_num_threads calls instead of changing the test process's threads."""
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    return calls


def seconds_per_token(threads: int, rows: int, k: int) -> float:
    """Synthetic: a second thread loses 10% on small work (fewer than 4 tokens fed a step: the
    per-op barrier) and wins 25% on more."""
    if threads == 1:
        return 1e-3
    return 1.1e-3 if rows * (k + 1) < 4 else 0.75e-3


def drive(tuner: ThreadTuner, rows: int, steps: int, k: int = 0, cost=seconds_per_token) -> list[int]:
    """Plan and observe `steps` decode steps of `rows` rows at K = k; the threads of each."""
    chosen = []
    for _ in range(steps):
        tuner.plan("decode", "draft" if k else "none", k, rows)
        t, fed = tuner.current, rows * (k + 1)
        tuner.observe(StepStats("none", "decode", rows, k=k, verify_s=cost(t, rows, k) * fed,
                                forwards=[Forward("target", [k + 1] * rows, 10)]))  # fmt: skip
        chosen.append(t)
    return chosen


def test_small_steps_keep_one_thread_large_ones_take_two(set_threads):
    tuner = ThreadTuner((1, 2), trials=4, recheck=1000)
    small, large = drive(tuner, 2, 200), drive(tuner, 32, 200)
    assert small[:8].count(1) == small[:8].count(2) == 4  # the trials interleave
    assert set(small[8:]) == {1} and set(large[8:]) == {2}
    assert tuner.arms[("decode", "plain", 0, 2)].choice == 1  # rows 2
    assert tuner.arms[("decode", "plain", 0, 32)].choice == 2  # rows 17-32
    assert set_threads[-1] == 2 == tuner.current
    assert len(set_threads) <= 2 * 8 + 2  # set only when the count changes


def test_kinds_of_step_are_timed_apart(set_threads):
    """At batch 1 a plain step is overhead-bound and a verify of K+1 = 5 tokens is not: the same
    bucket keeps 1 thread for one and 2 for the other (the bundled suite's draft on 2 cores)."""
    tuner = ThreadTuner((1, 2), trials=3)
    plain, verify = drive(tuner, 1, 50, k=0), drive(tuner, 1, 50, k=4)
    assert set(plain[6:]) == {1} and set(verify[6:]) == {2}
    for _ in range(10):  # alternating kinds: each step gets its own kind's choice
        assert drive(tuner, 1, 1, k=0) == [1] and drive(tuner, 1, 1, k=4) == [2]


def test_every_method_at_k_0_shares_one_choice(set_threads):
    """A plain step of any method is the same target forward: one arm, one set of trials. Timed
    apart, two methods' noisy trials could settle on different counts for the same work (a
    1-thread draft beside a 2-thread `none` at 32 rows ran at 0.80x of it, K = 0 throughout)."""
    tuner = ThreadTuner((1, 2), trials=4, recheck=1000)
    drive(tuner, 32, 20)  # `none`'s steps make the choice
    for method in ("draft", "ngram", "medusa", "eagle"):
        assert not tuner.plan("decode", method, 0, 32) and tuner.current == 2  # no trial
    assert tuner.plan("decode", "draft", 3, 32)  # K > 0: its own arm, a trial
    assert {key[1] for key in tuner.arms} == {"plain", "draft"}


def test_a_choice_is_checked_again_and_follows_a_change(set_threads):
    tuner = ThreadTuner((1, 2), trials=2, recheck=50)
    drive(tuner, 16, 30)
    assert tuner.arms[("decode", "plain", 0, 16)].choice == 2
    slower_now = lambda t, rows, k: 2e-3 if t == 2 else 1e-3  # noqa: E731 (say, clients took the core)
    chosen = drive(tuner, 16, 120, cost=slower_now)
    assert tuner.arms[("decode", "plain", 0, 16)].choice == 1
    assert chosen.count(2) <= 50 + 2  # the old choice holds until its re-check, then 2 trials


def test_untimed_steps_fixed_threads_and_none(set_threads):
    tuner = ThreadTuner((1, 2), trials=2)
    tuner.plan("decode", "plain", 0, 4)
    tuner.observe(StepStats("none", "decode", 4))  # fed nothing (every row aborted): not a sample
    assert not any(tuner.arms[("decode", "plain", 0, 4)].samples.values())
    fixed = ThreadTuner((3,))
    assert set(drive(fixed, 32, 20)) == {3} and set_threads[-1] == 3
    assert not any(fixed.arms[("decode", "plain", 0, 32)].samples.values())  # nothing to time
    n = len(set_threads)
    gpu = ThreadTuner(())
    gpu.plan("decode", "plain", 0, 32)
    gpu.observe(StepStats("none", "decode", 32, verify_s=1.0))
    assert len(set_threads) == n and not gpu.arms  # torch's threads left alone


def test_the_engine_plans_each_sub_batch_step(tiny, set_threads):
    """Through the service, the engine announces each prefill and decode of a sub-batch (method,
    K, rows) before running it, and the tuner times it from that step's stats."""
    calls: list[tuple] = []

    class Spy(ThreadTuner):
        def plan(self, phase: str, method: str, k: int, rows: int) -> bool:
            calls.append((phase, method, k, rows))
            return super().plan(phase, method, k, rows)

    engine = Engine(tiny["target"].model, tiny["draft"].model, max_batch_size=4)
    service = EngineService(engine, max_waiting=4, tuner=Spy((1, 2), trials=1))

    async def run() -> None:
        sampling = SamplingParams(max_new_tokens=3, ignore_eos=True)
        rows = [
            engine.make_row(p, sampling, SpecParams(m, 2), request_id=str(i))
            for i, (p, m) in enumerate([([5, 6, 7], "none"), ([3, 4], "none"), ([8, 9], "draft")])
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
    # step 1: each method's prefill, then each sub-batch's decode; K = 2 for the draft's rows
    assert calls[:4] == [("prefill", "none", 0, 2), ("prefill", "draft", 0, 1),
                         ("decode", "none", 0, 2), ("decode", "draft", 2, 1)]  # fmt: skip
    arms = service.tuner.arms
    assert [len(x) for x in arms[("prefill", "plain", 0, 2)].samples.values()] == [1, 0]  # one trial
    assert arms[("decode", "plain", 0, 2)].choice in (1, 2)  # two decode steps: a trial on each


def test_a_step_that_compiled_is_not_a_sample(set_threads):
    tuner = ThreadTuner((1, 2), trials=1)
    for _ in range(6):  # every step compiles a graph: no sample, so no choice is ever made
        tuner.plan("decode", "none", 0, 1)
        tuner.observe(StepStats("none", "decode", 1, verify_s=1.0, compiled=True,
                                forwards=[Forward("target", [1], 10)]))  # fmt: skip
    assert all(arm.choice is None and not any(arm.samples.values()) for arm in tuner.arms.values())


def test_trials_compare_steps_that_fed_as_many_tokens(set_threads):
    """Prompt lookup's steps at one K feed 1 to K + 1 tokens a row, and a token fed costs less in a
    wider step: trials are compared at equal tokens fed, else the thread count that happened to
    draw the wide steps wins (here 2 threads, 20% slower than 1 at every width)."""
    tuner = ThreadTuner((1, 2), trials=4)
    widths = [1, 8] * 4 + [8, 1] * 4  # the trials alternate 1, 2, 1, ...: 1 thread draws 1 token first
    for w in widths + [8] * 10:
        tuner.plan("decode", "ngram", 6, 1)
        t = tuner.current
        seconds = (1.0 if t == 1 else 1.2) * (1e-3 + 1e-4 * w)
        tuner.observe(StepStats("ngram", "decode", 1, k=6, verify_s=seconds,
                                forwards=[Forward("target", [w], 10)]))  # fmt: skip
    assert tuner.arms[("decode", "ngram", 6, 1)].choice == 1
