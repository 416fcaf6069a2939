"""Adaptive K: the controller's choice under synthetic costs, and `auto` staying lossless."""

from __future__ import annotations

import pytest
from scripted import Cycle, spec_step

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.adaptive import KController, bucket
from specserve.decoding.averages import Average
from specserve.decoding.stats import StepStats
from specserve.metrics.accounting import build_accountant
from specserve.metrics.peaks import Peaks


def simulate(ctl: KController, batch: int, step_cost, accept: float, steps: int = 300) -> int:
    """Run the controller against a synthetic machine; return its final choice."""
    for _ in range(steps):
        k = ctl.choose(batch)
        reached = [batch * accept**j for j in range(k)]
        stats = StepStats("draft", "decode", batch, k=k, propose_s=0.0, verify_s=step_cost(batch, k))
        stats.drafted_per_position = [batch] * k
        stats.reached_per_position = reached
        stats.accepted_per_position = [r * accept for r in reached]
        ctl.observe(stats)
    return ctl.choose(batch)


def test_k_zero_when_verification_cost_makes_speculation_lose():
    # compute-bound at a large batch: every extra verified token costs as much as the first
    compute_bound = lambda b, k: 0.010 * b * (1 + k) / 8  # noqa: E731
    assert simulate(KController(k_max=6), 32, compute_bound, accept=0.3) == 0


def test_k_positive_when_speculation_wins():
    # memory-bound at batch 1: the weights dominate, extra tokens are nearly free
    memory_bound = lambda b, k: 0.010 + 0.0005 * k  # noqa: E731
    ctl = KController(k_max=6)
    k = simulate(ctl, 1, memory_bound, accept=0.8)
    assert k >= 3
    assert ctl.accept[0] == pytest.approx(0.8, abs=0.01)  # the moving average found the acceptance


def test_untimed_overhead_counts_for_every_k_and_the_engine_measures_it(tiny):
    """A step's untimed seconds (accept, commit, hand-off, metrics) are paid once per step
    whatever K: fewer, longer steps pay them less often. At batch 1 the margin is 5%."""
    ctl = KController(k_max=4, accept=[0.6] * 4, samples=[9] * 4, tail=0.6)
    ctl.costs.table = {(1, 0): Average(0.005, n=5), (1, 4): Average(0.0112, n=5)}
    before = ctl.rates(1)
    assert before[4] / before[0] == pytest.approx(ctl.expected_tokens(4) * 0.005 / 0.0112)
    ctl.costs.overhead = 0.001
    after = ctl.rates(1)
    assert after[4] / after[0] == pytest.approx(ctl.expected_tokens(4) * 0.006 / 0.0122)
    assert before[4] < 1.05 * before[0] and after[4] > 1.05 * after[0]  # worth it at batch 1 ...
    assert (ctl._margin(1), ctl._margin(2)) == (0.05, pytest.approx(0.12))  # ... not at batch 2
    engine = Engine(tiny["target"].model, tiny["draft"].model, max_batch_size=2)
    engine.generate(
        [[5, 6, 7], [8, 9]], SamplingParams(max_new_tokens=8), SpecParams("draft", 3, adaptive=True)
    )
    assert engine.controllers["draft"].costs.overhead > 0


def test_expected_tokens_and_buckets():
    ctl = KController(k_max=3, accept=[0.5, 0.5, 0.5], avail=[1.0, 1.0, 0.5], samples=[9, 9, 9])
    assert ctl.expected_tokens(0) == 1.0
    assert ctl.expected_tokens(3) == pytest.approx(1 + 0.5 + 0.25 + 0.5 * 0.125)
    # positions measured too rarely take the pooled acceptance of positions 1.. instead
    ctl = KController(k_max=3, accept=[0.5, 0.6, 0.1], samples=[9, 9, 1], tail=0.9)
    assert ctl.expected_tokens(3) == pytest.approx(1 + 0.5 + 0.5 * 0.6 + 0.5 * 0.6 * 0.9)
    assert [bucket(b) for b in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]


def test_switching_cost_is_not_counted_against_speculation():
    """A draft catching up after plain steps (sync_s) costs once per switch; steady speculation
    that wins must still be chosen."""
    ctl = KController(k_max=4)
    prev = 0
    for _ in range(300):
        k = ctl.choose(1)
        sync = 0.05 if k and not prev else 0.0  # plain -> speculative: the draft catches up
        prev = k
        stats = StepStats("draft", "decode", 1, k=k, propose_s=0.001 * k + sync, verify_s=0.010, sync_s=sync)
        stats.drafted_per_position = [1] * k
        stats.reached_per_position = [1] * k
        stats.accepted_per_position = [1] * k  # always accepted
        ctl.observe(stats)
    assert ctl.choose(1) >= 3


@pytest.mark.parametrize("method,batch_size", [("draft", 1), ("draft", 4), ("ngram", 4)])
def test_auto_stays_lossless(tiny, method, batch_size):
    t, d = tiny["target"].model, tiny["draft"].model
    prompts = [[5, 6, 7, 5, 6, 7, 5], [9, 10, 11], [12, 13, 14, 15, 16], [3, 4]]
    sampling = SamplingParams(max_new_tokens=24)
    plain = Engine(t).generate(prompts, sampling, SpecParams())
    engine = Engine(t, d, max_batch_size=batch_size)
    res = engine.generate(prompts, sampling, SpecParams(method, 4, adaptive=True))
    assert [r.token_ids for r in res] == [r.token_ids for r in plain]
    ctl = engine.controllers[method]
    assert ctl.k_max == 4 and ctl.costs.table  # it measured step costs
    measured = {k for (_, k) in ctl.costs.table}
    assert 0 in measured and measured - {0}  # plain steps and speculative ones
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


@pytest.mark.parametrize("draft_kind", ["same", "random"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_draft_syncs_lazily_across_plain_steps(tiny, draft_kind, batch_size):
    """Plain steps never feed the draft and joining rows are prefilled in it only when a step
    speculates; the output stays token-identical to plain decoding."""
    t = tiny["target"].model
    draft = {"same": tiny["target"], "random": tiny["draft"]}[draft_kind]
    prompts = [[5, 6, 7, 5, 6, 7, 5], [9, 10, 11], [12, 13, 14, 15, 16], [3, 4], [8, 8, 8, 8, 8, 8]]
    sampling = [SamplingParams(max_new_tokens=n) for n in (20, 9, 30, 14, 25)]  # rows leave and join
    plain = Engine(t).generate(prompts, sampling, SpecParams())
    acct = build_accountant(tiny["target"], draft, peaks=Peaks(1e9, 1e10, "flag"))
    engine = Engine(t, draft.model, max_batch_size=batch_size, charge=acct)
    engine.controllers["draft"] = Cycle(k_max=4)
    seen = []
    engine.on_step = seen.append
    res = engine.generate(prompts, sampling, SpecParams("draft", 4, adaptive=True))
    assert [r.token_ids for r in res] == [r.token_ids for r in plain]
    plain_steps = [s for s in seen if s.phase == "decode" and s.k == 0]
    assert plain_steps and all(f.model == "target" for s in plain_steps for f in s.forwards)
    assert all(f.model == "target" for s in seen if s.phase == "prefill" for f in s.forwards)
    # the draft's prefill of joining rows is charged to them alone; shares still add up exactly
    total = sum(sum(k.values()) for s in seen for k in s.bytes_read.values())
    assert sum(r.stats.bytes_read for r in res) == pytest.approx(total)
    if draft_kind == "same":
        assert sum(r.stats.accepted_tokens for r in res) == sum(r.stats.draft_tokens for r in res)


def test_measured_outcomes_overrule_the_model():
    """The model sees every candidate accepted, but the steps keep giving one token per row (as when
    rows keep hitting their token budget or a stop string mid-step): the tokens per second those
    steps really gave veto the model's promise."""
    ctl = KController(k_max=4)
    ks = []
    for _ in range(600):
        k = ctl.choose(1)
        ks.append(k)
        stats = StepStats("draft", "decode", 1, k=k, propose_s=0.001 * k, verify_s=0.010)
        stats.drafted_per_position = stats.reached_per_position = stats.accepted_per_position = [1] * k
        stats.emitted_tokens = 1  # 1 token in 14 ms loses to 1 token in 10 ms
        ctl.observe(stats)
    assert ctl.rates(1)[4] > 2 * ctl.rates(1)[0]  # the model alone would speculate
    assert ks[-200:].count(0) >= 180


@pytest.mark.parametrize("paid_below", [False, True])
def test_a_new_larger_batch_inherits_a_smaller_ones_no(paid_below):
    """Speculation that did not pay at batch 8 will not at 16: the new bucket runs plain steps
    without the anchor or trials that would end a lockstep; one that paid is explored."""
    from specserve.decoding.averages import Average, RateAverage

    ctl = KController(k_max=4)
    for k in (0, 2):
        ctl.costs.table[(8, k)] = Average(0.010 * (1 + k), 9)
    ctl.realized[(8, False)] = RateAverage(1.0, 0.010, 72)
    ctl.realized[(8, True)] = RateAverage(1.5 if paid_below else 0.9, 0.010, 72)
    ks = [ctl.choose(16) for _ in range(2)]
    ctl.observe(StepStats("draft", "decode", 16, k=0, verify_s=0.02))
    ctl.observe(StepStats("draft", "decode", 16, k=0, verify_s=0.02))
    ks += [ctl.choose(16) for _ in range(200)]
    assert (max(ks) > 0) == paid_below


def test_bad_luck_on_the_first_guesses_does_not_shut_speculation_off():
    """At batch 1 each speculative step is one row's draw: a first few rejected guesses are not
    evidence enough to run plain steps until the exploration budget pays for a retry."""
    ctl = KController(k_max=4)
    ks, spec_steps = [], 0
    for _ in range(300):
        k = ctl.choose(1)
        ks.append(k)
        accept = 0.0 if k and spec_steps < 4 else 0.8  # the first four speculative steps miss
        spec_steps += k > 0
        reached = [accept**j for j in range(k)]
        stats = StepStats("draft", "decode", 1, k=k, propose_s=0.001 * k, verify_s=0.010)
        stats.drafted_per_position = [1] * k
        stats.reached_per_position = reached
        stats.accepted_per_position = [r * accept for r in reached]
        stats.emitted_tokens = 1 + int(sum(stats.accepted_per_position))
        ctl.observe(stats)
    assert sum(k > 0 for k in ks[20:]) >= 0.9 * len(ks[20:])


def test_the_anchor_holds_until_the_first_position_has_seen_enough_rows():
    ctl = KController(k_max=4)
    for _ in range(2):
        ctl.choose(1)
        ctl.observe(StepStats("draft", "decode", 1, k=0, verify_s=0.010))
    anchor = ctl.choose(1)
    assert anchor == 2
    ctl.observe(spec_step(anchor, accepted=0))  # one row's first guess missed
    assert ctl.choose(1) == anchor  # one coin flip is not a measurement
    ctl = KController(k_max=4)
    for _ in range(2):
        ctl.choose(8)
        ctl.observe(StepStats("draft", "decode", 8, k=0, verify_s=0.010))
    ctl.choose(8)
    ctl.observe(spec_step(2, accepted=0, batch=8, seconds=0.030))  # eight rows missed: enough
    assert ctl.choose(8) == 0


def test_realized_rate_is_a_ratio_of_averages_and_vetoes_only_on_enough_rows():
    from specserve.decoding.averages import RateAverage

    r = RateAverage()
    r.add(4.0, 0.010, 1, alpha=0.02, max_weight=0.2)
    r.add(1.0, 0.030, 1, alpha=0.02, max_weight=0.2)
    assert r.value == pytest.approx(2.5 / 0.020)  # not the mean of 400 and 33 tok/s
    ctl = KController(k_max=4)
    ctl.realized[(1, False)] = RateAverage(1.0, 0.010, 8)  # 100 tok/s plain
    ctl.realized[(1, True)] = RateAverage(1.0, 0.014, 8)  # 71 tok/s speculative, 8 draws
    assert ctl._realized_ok(1)
    ctl.realized[(1, True)].rows = 40
    assert not ctl._realized_ok(1)


def test_a_short_bad_stretch_does_not_flip_the_acceptance_estimate():
    ctl = KController(k_max=2)
    for _ in range(200):
        ctl.observe(spec_step(2, accepted=2))
    before = ctl.accept[0]
    for _ in range(10):
        ctl.observe(spec_step(2, accepted=0))
    assert before > 0.95 and ctl.accept[0] > 0.75
