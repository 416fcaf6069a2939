"""Adaptive K, exploring: trials paid from a budget, rare where they cannot change the verdict but
never gone, and a draft's catching up after plain steps charged to switching, not to K."""

from __future__ import annotations

from scripted import Cycle

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.adaptive import KController
from specserve.decoding.params import AUTO_MAX_TOKENS
from specserve.decoding.stats import StepStats


def _step(ctl: KController, batch: int, accept: float, cost) -> int:
    """One step on a synthetic machine: the K chosen, its time `cost(K)`, acceptance `accept` at
    every position, fed back. Returns K."""
    k = ctl.choose(batch)
    stats = StepStats("draft", "decode", batch, k=k, verify_s=cost(k))
    stats.drafted_per_position = [batch] * k
    stats.reached_per_position = [batch * accept**j for j in range(k)]
    stats.accepted_per_position = [r * accept for r in stats.reached_per_position]
    ctl.observe(stats)
    return k


def _run_plain_winning(ctl: KController, accept: float = 0.6, steps: int = 2000) -> tuple[list[int], float]:
    """Batch 32, each verified token costing 0.7 of the first: plain wins. Returns the Ks and the
    tokens per row-second they gave."""
    cost = lambda k: 0.010 * (1 + 0.7 * k)  # noqa: E731
    ks = [_step(ctl, 32, accept, cost) for _ in range(steps)]
    return ks, sum(ctl.expected_tokens(k) for k in ks) / sum(cost(k) for k in ks)


def test_exploring_while_plain_wins_stays_within_its_budget():
    """Trials of K > 0 are paid from `regret`: they cost at most that share of the plain steps'
    tokens. With hope = 1 (any candidate might be accepted: 1.35x plain at K = 6) a trial is
    worth its loss; by default it must have a chance to change the verdict (the 20% margin at batch
    32), and with three quarters of the rejections away it would reach only 1.13x: such trials are
    charged ten times their loss, so they come rarely, but they come."""
    plain_rate = 1 / 0.010
    runs = {hope: _run_plain_winning(KController(k_max=6, hope=hope)) for hope in (1.0, KController.hope)}
    trials = {hope: sum(k > 0 for k in ks[100:]) for hope, (ks, _) in runs.items()}
    for ks, rate in runs.values():
        assert ks[-200:].count(0) >= 150
        assert rate >= (1 - 2 * KController.regret) * plain_rate
    assert 0 < trials[KController.hope] < trials[1.0] / 5


def test_speculation_found_again_when_acceptance_rises():
    """Acceptance measured low (0.3) makes trials hopeless; when the drafts turn good (0.97), the
    rare trials still find it, and speculation takes over."""
    cost = lambda k: 0.010 * (1 + 0.6 * k)  # noqa: E731
    ctl = KController(k_max=6)
    ks = [_step(ctl, 16, accept, cost) for accept, steps in ((0.3, 200), (0.97, 3000)) for _ in range(steps)]
    assert sum(k > 0 for k in ks[-500:]) > 450


class _PlainThenSpeculate(Cycle):
    script = (0, 0, 0, 3, 3, 3)


def test_a_draft_catching_up_after_plain_steps_is_switching_cost(tiny):
    """The first speculative step after plain ones feeds the draft every token it missed: that is
    the price of the plain steps (sync_s, left out of K's cost); steady speculation leaves the
    draft 1-2 tokens behind and has none."""
    engine = Engine(tiny["target"].model, tiny["draft"].model, max_batch_size=2)
    engine.controllers["draft"] = _PlainThenSpeculate(k_max=AUTO_MAX_TOKENS)
    steps: list[StepStats] = []
    engine.on_step = lambda s: steps.append(s) if s.phase == "decode" else None
    spec = SpecParams.parse("draft", "auto")
    engine.generate([[5, 6, 7], [9, 10, 11, 12]], SamplingParams(max_new_tokens=30, ignore_eos=True), spec)
    after_plain = [s for prev, s in zip(steps, steps[1:], strict=False) if s.k and not prev.k]
    steady = [s for prev, s in zip(steps, steps[1:], strict=False) if s.k and prev.k]
    assert after_plain and steady
    assert all(s.sync_s > 0 for s in after_plain), [(s.k, s.sync_s) for s in steps]
    assert all(s.sync_s == 0 for s in steady), [(s.k, s.sync_s) for s in steps]
