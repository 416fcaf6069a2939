"""Adaptive K: the controller's choice under synthetic costs, and `auto` staying lossless."""

from __future__ import annotations

import pytest

from decoding import Engine, SamplingParams, SpecParams
from decoding.adaptive import KController, bucket
from decoding.stats import StepStats


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


def test_expected_tokens_and_buckets():
    ctl = KController(k_max=3, accept=[0.5, 0.5, 0.5], avail=[1.0, 1.0, 0.5])
    assert ctl.expected_tokens(0) == 1.0
    assert ctl.expected_tokens(3) == pytest.approx(1 + 0.5 + 0.25 + 0.5 * 0.125)
    assert [bucket(b) for b in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]


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
    assert ctl.k_max == 4 and ctl.cost  # it measured step costs
    assert {0, 4} <= {k for (_, k) in ctl.cost}  # both ends of the cost line were measured
    assert all(0.0 <= r.stats.to_dict()["num_speculative_tokens"] <= 4 for r in res)


def test_seeded_sampling_repeats_under_auto_and_matches_plain(tiny):
    """Emitted tokens draw uniforms by position, so K (chosen per step) cannot change a seeded
    sample for ngram; draft keeps a fixed K when seeded. Both repeat run after run."""
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
        assert runs[0] == runs[1]
        if method == "ngram":
            assert runs[0] == plain  # the same tokens plain sampling draws with that seed
