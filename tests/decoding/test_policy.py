"""The K policy: the rule E(K) / t(b, K) with a margin, probes, and a user's schedule."""

from __future__ import annotations

from collections import deque

import pytest
from scripted import spec_step

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.calibrate import calibrate
from specserve.decoding.policy import (
    ALPHA,
    MARGIN,
    PRIOR,
    PROBE_EVERY,
    PROBE_K,
    Acceptance,
    SchedulePolicy,
    bucket,
)
from specserve.decoding.stats import StepStats

STEPS = int(10 / ALPHA)  # steps after which a moving average has all but forgotten its start (e^-10)


def cheap_at_one(method: str, rows: int, k_max: int) -> list[float]:
    """A machine where verifying more tokens is nearly free for one row and dear for many."""
    per_k = 0.05 if rows == 1 else 1.0
    return [1.0 + per_k * k for k in range(k_max + 1)]


def test_buckets_are_powers_of_two():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 32)] == [1, 2, 4, 4, 8, 8, 16, 32]


def test_expected_tokens_are_the_first_share_then_one_ratio_per_position():
    acc = Acceptance()
    assert acc.expected(0) == 1.0
    assert acc.expected(2) == pytest.approx(1 + PRIOR + PRIOR**2)  # nothing measured: the prior
    acc = Acceptance(first=0.6, then=0.5)
    assert acc.expected(2) == pytest.approx(1.9)
    assert acc.expected(4) == pytest.approx(1.9 + 0.15 + 0.075)


def test_acceptance_moves_toward_what_steps_gave():
    acc = Acceptance()
    for _ in range(STEPS):
        acc.add([1, 1, 1, 1], 3)  # every row emits candidate 0, none candidate 1
    assert acc.first == pytest.approx(1.0, abs=1e-3) and acc.then == pytest.approx(0.0, abs=1e-3)
    assert acc.expected(5) == pytest.approx(2.0, abs=1e-2)


def test_deep_positions_follow_what_shallow_steps_measure():
    """A request that accepted little at K = 5, then one accepting every candidate at K = 2: the
    positions K = 2 never offers follow what it measures. (Kept per position, they held the first
    request's values, and `auto` stayed at a small K where a deep one paid.)"""
    acc = Acceptance()
    for _ in range(STEPS):
        acc.add([1], 5)  # candidate 0 emitted, candidate 1 rejected
    assert acc.expected(5) == pytest.approx(2.0, abs=1e-2)
    for _ in range(STEPS):
        acc.add([2], 2)  # both candidates offered emitted
    assert acc.expected(5) == pytest.approx(6.0, abs=0.05)


def test_speculates_where_it_pays_and_steps_plainly_where_it_does_not():
    policy = SchedulePolicy(cheap_at_one)
    assert policy.choose("draft", 1, 6) > 0  # cheap candidates, a hopeful prior: speculate
    assert policy.choose("draft", 32, 6) == 0  # each candidate costs a whole step: never pays
    for _ in range(STEPS):
        policy.observe(spec_step(k=4, accepted=0), 1.2)  # nothing is ever accepted
    assert policy.choose("draft", 1, 6) == 0
    assert set(policy.costs) == {("draft", 1), ("draft", 32)}  # each bucket timed once


def test_real_steps_dearer_than_the_timed_ones_stop_speculation():
    """Scratch rows miss what real steps pay (a draft catching up, rows joining, the hand-off): the
    policy adds what real steps took beyond the timing, speculative and plain steps apart."""
    policy = SchedulePolicy(cheap_at_one)
    policy.accept["draft", False] = Acceptance(first=0.5, then=0.5)
    assert policy.choose("draft", 1, 6) > 0
    for _ in range(STEPS):
        k = policy.choose("draft", 1, 6) or PROBE_K
        policy.observe(spec_step(k=k, accepted=1), cheap_at_one("draft", 1, 6)[k] + 2.0)  # 2 s more
        policy.observe(StepStats("draft", "decode", 1, k=0), cheap_at_one("draft", 1, 6)[0])
    assert policy.real["draft", 1, True] == pytest.approx(2.0, rel=0.05)
    assert policy.real["draft", 1, False] == pytest.approx(0.0)
    assert policy.choose("draft", 1, 6) == 0


def test_a_step_that_compiled_a_thread_trial_a_catch_up_or_a_spike_barely_moves_the_real_costs():
    """At one row a two-thread trial of the thread tuner's takes about 1.7x a step: counted, the
    trials held the draft's speculative steps 15-20% above their timing and kept it plain, where
    nothing updates that average again. A step whose draft caught up on plain steps ran its first
    forward as the catch-up (`sync_s`): less that, it looked cheaper than a steady step by about
    one draft forward."""
    policy = SchedulePolicy(cheap_at_one)
    policy.choose("draft", 1, 6)
    policy.observe(StepStats("draft", "decode", 1, k=0, compiled=True), 50.0)  # a compile: skipped
    policy.observe(StepStats("draft", "decode", 1, k=0, trial=True), 50.0)  # a thread trial: skipped
    caught_up = spec_step(k=2, accepted=1)
    caught_up.sync_s = 0.5
    policy.observe(caught_up, 0.1)  # a catch-up: skipped
    assert ("draft", 1, False) not in policy.real and ("draft", 1, True) not in policy.real
    policy.observe(StepStats("draft", "decode", 1, k=0), 50.0)  # a preemption: clipped to 1.5x
    assert policy.real["draft", 1, False] == pytest.approx(ALPHA * 0.5)  # timed 1.0, counted 1.5


def test_greedy_and_sampled_rows_keep_their_own_acceptance():
    """Sampled rows accept far less than greedy ones. Kept in one average, a sampled request
    dragged it down and the greedy request after it stepped plainly where K > 0 paid; apart, each
    step weighs the two by its rows of each kind."""
    policy = SchedulePolicy(cheap_at_one)
    step = spec_step(k=4, accepted=4, batch=2)
    step.accepted_per_row = [4, 0]  # a greedy row accepting every candidate, a sampled row none
    for _ in range(STEPS):
        policy.observe(step, 1.2, [False, True])
    greedy, sampled = policy.accept["draft", False], policy.accept["draft", True]
    assert greedy.expected(4) == pytest.approx(5.0, abs=1e-2)
    assert sampled.expected(4) == pytest.approx(1.0, abs=1e-2)
    assert policy.best("draft", 1, 6, share=0.0) > 0  # a greedy row: speculate
    assert policy.best("draft", 1, 6, share=1.0) == 0  # a sampled row: nothing would be accepted
    assert policy.choose("draft", 1, 6, sampled=0) > 0


def test_margin_keeps_plain_steps_when_speculation_barely_wins():
    flat = SchedulePolicy(lambda m, rows, k_max: [1.0] + [1.9] * k_max)
    flat.accept["ngram", False] = Acceptance(first=1.0)  # K = 1: 2 tokens for 1.9x the time: +5% only
    assert 1 + MARGIN > 2 / 1.9 and flat.best("ngram", 1, 1) == 0


def test_plain_buckets_probe_only_where_perfect_acceptance_would_pay():
    policy = SchedulePolicy(cheap_at_one)
    policy.accept["draft", False] = Acceptance(first=0.0)  # measured: nothing accepted
    ks = [policy.choose("draft", 1, 6) for _ in range(3 * PROBE_EVERY)]
    assert ks.count(PROBE_K) == 3 and set(ks) == {0, PROBE_K}
    wide = SchedulePolicy(lambda m, rows, k_max: [1.0 + 0.1 * k for k in range(k_max + 1)])
    wide.accept["draft", False] = Acceptance(first=0.0)
    ks = [wide.choose("draft", 16, 6) for _ in range(3 * 16 * PROBE_EVERY)]  # 16 rows a probe:
    assert ks.count(PROBE_K) == 3 and set(ks) == {0, PROBE_K}  # one in 16 x PROBE_EVERY steps
    hopeless = SchedulePolicy(lambda m, rows, k_max: [1.0 + 2.0 * k for k in range(k_max + 1)])
    assert {hopeless.choose("draft", 1, 6) for _ in range(3 * PROBE_EVERY)} == {0}


def test_buckets_at_k_1_probe_a_second_candidate_and_deeper_ones_never_probe():
    """Steps at K = 1 never offer a second candidate, so `then` is measured only when one is
    offered: every PROBE_EVERY-th step offers PROBE_K, and a deeper K is found when acceptance
    there turns out better. Steps at K >= 2 measure `then` themselves: none probes (one more
    candidate cost EAGLE about 1% at one row, for nothing E(K + 1) did not know)."""
    deep = SchedulePolicy(lambda m, rows, k_max: [1.0, 1.3, 1.6, 1.9, 3.0, 4.0, 5.0][: k_max + 1])
    deep.accept["ngram", False] = Acceptance(first=0.9, then=0.9)  # K = 3 best, 4..6 allowed
    assert {deep.choose("ngram", 1, 6) for _ in range(2 * PROBE_EVERY)} == {3}
    policy = SchedulePolicy(lambda m, rows, k_max: [1.0 + 0.3 * k for k in range(k_max + 1)])
    policy.accept["ngram", False] = Acceptance(first=0.9, then=0.0)  # later candidates looked bad
    ks = [policy.choose("ngram", 1, 6) for _ in range(2 * PROBE_EVERY)]
    assert set(ks) == {1, 2} and ks.count(2) == 2
    for _ in range(STEPS):  # the probes find the second candidate accepted after all
        stats = spec_step(k=2, accepted=2)
        stats.method = "ngram"
        policy.observe(stats, 1.6)
    assert policy.choose("ngram", 1, 6) >= 2


def test_a_given_schedule_replaces_the_rule_and_never_times_steps():
    def never(*args):
        raise AssertionError("a scheduled method is not timed")

    policy = SchedulePolicy(never, {"draft": {1: 3, 5: 1, 9: 0}, "*": {1: 2}})
    assert [policy.choose("draft", b, 6) for b in (1, 4, 5, 8, 9, 64)] == [3, 3, 1, 1, 0, 0]
    assert policy.choose("ngram", 16, 6) == 2 and policy.choose("draft", 1, 2) == 2  # capped by k_max


def test_the_engine_times_real_steps_and_stays_lossless(tiny):
    """Calibration runs real decode steps on scratch rows (every K, every bucket asked for); the
    policy's choices leave greedy output identical to plain decoding."""
    t, d = tiny["target"].model, tiny["draft"].model
    prompts = [[5, 6, 7, 5, 6, 7, 5], [9, 10, 11, 9, 10], [12, 13, 14]]
    sampling = SamplingParams(max_new_tokens=16)
    plain = [r.token_ids for r in Engine(t).generate(prompts, sampling, SpecParams())]
    engine = Engine(t, d, max_batch_size=3)
    calibrate(engine, ("draft",))
    assert set(engine.policy.costs) == {("draft", 1), ("draft", 2), ("draft", 4)}
    assert all(len(c) == 7 and min(c) > 0 for c in engine.policy.costs.values())
    out = engine.generate(prompts, sampling, SpecParams.parse("draft", "auto"))
    assert [r.token_ids for r in out] == plain
    assert engine.waiting == deque() and engine.num_running == 0  # scratch rows never joined


def test_the_engine_marks_thread_trials_and_they_leave_the_real_costs_alone(tiny):
    engine = Engine(tiny["target"].model, tiny["draft"].model, max_batch_size=1)
    sampling, auto = SamplingParams(max_new_tokens=8), SpecParams.parse("draft", "auto")
    engine.on_plan = lambda phase, method, k, rows: True  # every step is a thread tuner's trial
    engine.generate([[5, 6, 7, 5, 6, 7, 5]], sampling, auto)
    assert ("draft", 1) in engine.policy.costs and not engine.policy.real
    engine.on_plan = lambda phase, method, k, rows: False
    engine.generate([[5, 6, 7, 5, 6, 7, 5]], sampling, auto)
    assert engine.policy.real


@pytest.mark.parametrize("method,batch_size", [("draft", 1), ("draft", 4), ("ngram", 4)])
def test_auto_stays_lossless(tiny, method, batch_size):
    t, d = tiny["target"].model, tiny["draft"].model
    prompts = [[5, 6, 7, 5, 6, 7, 5], [9, 10, 11], [12, 13, 14, 15, 16], [3, 4]]
    sampling = SamplingParams(max_new_tokens=24)
    plain = Engine(t).generate(prompts, sampling, SpecParams())
    engine = Engine(t, d, max_batch_size=batch_size)
    res = engine.generate(prompts, sampling, SpecParams(method, 4, adaptive=True))
    assert [r.token_ids for r in res] == [r.token_ids for r in plain]
    assert (method, batch_size) in engine.policy.costs  # it timed its steps at that bucket
    assert all(0.0 <= r.stats.to_dict()["num_speculative_tokens"] <= 4 for r in res)


def test_seeded_sampling_repeats_under_auto_and_matches_plain(tiny):
    """Emitted tokens draw uniforms by position, so K (chosen per step) cannot change a seeded
    sample for ngram, nor for draft (a seeded row's draft samples with the same uniforms and is
    matched). Both repeat run after run and equal plain sampling with that seed."""
    t, d = tiny["target"].model, tiny["draft"].model
    prompts = [[5, 6, 7, 5, 6, 7, 5], [9, 10, 11, 9, 10]]
    sampling = [SamplingParams(max_new_tokens=20, temperature=1.0, seed=s) for s in (7, 8)]
    plain = [r.token_ids for r in Engine(t).generate(prompts, sampling, SpecParams())]
    for method in ("ngram", "draft"):
        runs = [
            [
                r.token_ids
                for r in Engine(t, d, max_batch_size=b).generate(
                    prompts, sampling, SpecParams.parse(method, "auto")
                )
            ]
            for b in (1, 2)
        ]
        assert runs[0] == runs[1] == plain  # the same tokens plain sampling draws with that seed
