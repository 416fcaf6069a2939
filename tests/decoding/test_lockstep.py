"""Lockstep groups: who is grouped, the clip, its price in the controller, and that clipped
speculation stays token-identical to plain decoding while keeping its rows finishing together."""

from __future__ import annotations

import copy

import pytest
import torch
from scripted import Always, Unclipped

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.adaptive import KController
from specserve.decoding.lockstep import clip, expected_tokens, group_sizes, groups
from specserve.decoding.row import Row
from specserve.decoding.stats import RequestStats, StepStats


def _row(max_new: int, generated: int = 0, adaptive: bool = True, method: str = "draft", seed=None) -> Row:
    sampling = SamplingParams(max_new_tokens=max_new, temperature=0.0 if seed is None else 1.0, seed=seed)
    return Row(
        request_id="r", tokens=[1, 2] + [3] * generated, prompt_len=2, sampling=sampling,
        spec=SpecParams(method, 4, adaptive=adaptive), stop_ids=frozenset(), max_len=100,
        generator=None, stream=None, stats=RequestStats(method=method),
    )  # fmt: skip


def test_rows_plain_decoding_keeps_together_group_unless_fixed_k():
    rows = [
        _row(10),
        _row(12, generated=2),  # 10 left, like the first, and the same step to end at
        _row(9),
        _row(10, adaptive=False),  # a fixed K is the caller's choice
        _row(10, seed=7),  # seeded: its tokens go by position whatever the clip (draft too)
        _row(10, method="ngram", seed=7),  # prompt lookup's sample path goes by position: may clip
        _row(10),  # 10 left by chance: plain decoding would end it at another step
    ]
    rows[-1].plain_end = 5
    ids = groups(rows)
    assert ids[0] == ids[1] == ids[4] == ids[5]
    assert len({ids[0], ids[2], ids[3], ids[6]}) == 4
    assert group_sizes(ids) == [4, 4, 1, 1, 4, 4, 1]


def test_clip_cuts_each_group_to_its_least_accepted_and_emits_the_next_accepted_candidate():
    cand = [[11, 12, 13], [21, 22, 23], [31, 32, 33], [41, 42, 43]]
    n = torch.tensor([3, 1, 2, 0])
    nxt = torch.tensor([14, 92, 93, 94])  # bonus for row 0, recovered tokens for the others
    n2, nxt2, dropped = clip(n, nxt, cand, [0, 0, 0, 3])
    assert n2.tolist() == [1, 1, 1, 0]
    assert nxt2.tolist() == [12, 92, 32, 94]  # rows cut short emit their accepted candidate 1
    assert dropped == (3 - 1) + (2 - 1)


def test_expected_tokens_of_a_group_is_that_all_its_rows_get_past():
    reach = [0.6, 0.3]
    assert expected_tokens(reach, []) == pytest.approx(1.9)
    assert expected_tokens(reach, [1, 1]) == pytest.approx(1.9)
    assert expected_tokens(reach, [2, 2]) == pytest.approx(1 + 0.36 + 0.09)
    assert expected_tokens(reach, [2, 2, 1]) == pytest.approx((2 * 1.45 + 1.9) / 3)
    assert expected_tokens(reach, {2: 2, 1: 1}) == pytest.approx((2 * 1.45 + 1.9) / 3)  # {size: rows}


def _simulate(
    ctl: KController, batch: int, sizes, accept: float, cost: float, steps: int = 300
) -> list[tuple[int, bool]]:
    """A machine where each candidate costs `cost` of a plain step. Returns (K, clipped) of the last
    100 steps."""
    out = []
    for _ in range(steps):
        k = ctl.choose(batch, sizes)
        out.append((k, ctl.lock))
        stats = StepStats("draft", "decode", batch, k=k, verify_s=0.010 * (1 + cost * k), lockstep=ctl.lock)
        stats.drafted_per_position = [batch] * k
        stats.reached_per_position = [batch * accept**j for j in range(k)]
        stats.accepted_per_position = [r * accept for r in stats.reached_per_position]
        reach = [accept ** (j + 1) for j in range(k)]
        stats.emitted_tokens = round(batch * expected_tokens(reach, sizes if ctl.lock else []))
        ctl.observe(stats)
    return out[-100:]


def test_controller_steps_plainly_in_a_large_lockstep_group_and_speculates_when_free():
    # unclipped, K = 2 gives 1.31x a plain step: past the 18% margin at batch 16, short of the 40% a
    # lockstep of 16 is worth; clipped, 16 rows rarely all accept
    free = _simulate(KController(k_max=4), 16, [1] * 16, accept=0.6, cost=0.25)
    locked = _simulate(KController(k_max=4), 16, [16] * 16, accept=0.6, cost=0.25)
    assert sum(k > 0 for k, _ in free) > 90
    # hardly a trial either: with 16 rows that must all accept, none could change the verdict
    assert sum(k > 0 for k, _ in locked) <= 3
    hopeful = _simulate(KController(k_max=4, hope=1.0), 16, [16] * 16, accept=0.6, cost=0.25)
    assert 0 < sum(k > 0 for k, _ in hopeful) < 30  # budgeted trials, were every candidate accepted ...
    assert all(clipped for k, clipped in hopeful if k)  # ... and a trial must not end the lockstep


def test_controller_ends_a_small_lockstep_only_when_unclipped_speculation_pays_for_it():
    # a pair: 2.4x unclipped against 1.8x clipped, more than the 10% a lockstep of 2 is worth
    pair = _simulate(KController(k_max=4), 2, [2, 2], accept=0.8, cost=0.1)
    assert sum(k > 0 and not clipped for k, clipped in pair) > 90
    # eight rows: 1.23x unclipped, short of the 30% a lockstep of 8 is worth
    eight = _simulate(KController(k_max=4), 8, [8] * 8, accept=0.6, cost=0.3)
    assert sum(k > 0 for k, _ in eight) < 30
    assert all(clipped for k, clipped in eight if k)
    unclipped = _simulate(KController(k_max=4), 8, [1] * 8, accept=0.6, cost=0.3)
    assert sum(k > 0 for k, _ in unclipped) > 90  # it would pay out of lockstep


def test_trials_stay_clipped_when_unclipped_speculation_was_vetoed():
    """The model says unclipped speculation wins at batch 2, but what it really gave vetoes it:
    then plain steps run, and the trials among them must be clipped, or the first ends the lockstep."""
    ctl = KController(k_max=4)
    for _ in range(100):  # out of lockstep: every speculative step really gave one token per row
        k = ctl.choose(2, [1, 1])
        stats = StepStats("draft", "decode", 2, k=k, verify_s=0.010 * (1 + 0.1 * k), emitted_tokens=2)
        stats.drafted_per_position = [2] * k
        stats.reached_per_position = [2 * 0.8**j for j in range(k)]
        stats.accepted_per_position = [r * 0.8 for r in stats.reached_per_position]
        ctl.observe(stats)
    assert not ctl._realized_ok(2)
    locked = _simulate(ctl, 2, [2, 2], accept=0.8, cost=0.1)
    assert any(k for k, _ in locked)  # it still explores ...
    assert all(clipped for k, clipped in locked if k)  # ... in lockstep


def test_a_lockstep_ends_only_for_what_unclipped_speculation_really_gave():
    """Out of lockstep, unclipped speculation really gave 1.2x plain at batch 8 (the model says
    2.4x): past the 16% speculation margin, short of the 30% a lockstep of 8 is worth."""
    ctl = KController(k_max=4)
    for _ in range(200):
        k = ctl.choose(8, [1] * 8)
        stats = StepStats("draft", "decode", 8, k=k, verify_s=0.010 * (1 + 0.1 * k))
        stats.emitted_tokens = round(8 * (1.2 * (1 + 0.1 * k) if k else 1))
        stats.drafted_per_position = [8] * k
        stats.reached_per_position = [8 * 0.8**j for j in range(k)]
        stats.accepted_per_position = [r * 0.8 for r in stats.reached_per_position]
        ctl.observe(stats)
    assert ctl._realized_ok(8)  # out of lockstep it speculates ...
    locked = _simulate(ctl, 8, [8] * 8, accept=0.8, cost=0.1)
    assert all(clipped for k, clipped in locked if k)  # ... in lockstep it does not end it


def test_clipped_speculation_is_checked_by_what_it_really_gave():
    """Two pairs among 16 rows formed by chance: the steps are clipped, so the model alone would
    keep speculating when it predicts a gain. Here each step really gives one token per row."""
    ctl = KController(k_max=4)
    sizes = [2, 2, 2, 2] + [1] * 12
    ks = []
    for _ in range(300):
        k = ctl.choose(16, sizes)
        ks.append(k)
        stats = StepStats("draft", "decode", 16, k=k, verify_s=0.010 * (1 + 0.1 * k), lockstep=ctl.lock)
        stats.emitted_tokens = 16
        stats.drafted_per_position = [16] * k
        stats.reached_per_position = [16 * 0.7**j for j in range(k)]
        stats.accepted_per_position = [r * 0.7 for r in stats.reached_per_position]
        ctl.observe(stats)
    assert sum(k > 0 for k in ks[-100:]) < 30


@pytest.fixture(scope="module")
def noisy(tiny):
    """The target with noise on its output layer: accepts some candidates, rejects others."""
    d = copy.deepcopy(tiny["target"].model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        w = d.lm_head.weight
        w.add_(torch.randn(w.shape, generator=g, dtype=w.dtype) * w.std() * 0.8)
    return d


def _run(tiny, draft, controller: type[KController], prompts, max_new: list[int]):
    """Decode to the end; each row's tokens, the engine step it finished in, and tokens dropped."""
    engine = Engine(tiny["target"].model, draft, max_batch_size=4)
    engine.controllers["draft"] = controller(k_max=4)
    rows = [
        engine.make_row(p, SamplingParams(max_new_tokens=n), SpecParams("draft", 4, adaptive=True))
        for p, n in zip(prompts, max_new, strict=True)
    ]
    for r in rows:
        engine.add(r)
    done: dict[int, int] = {}
    step = 0
    while engine.has_work():
        step += 1
        for r in engine.step():
            done[id(r)] = step
    return [r.generated for r in rows], [done[id(r)] for r in rows], sum(r.stats.dropped_tokens for r in rows)


@pytest.mark.parametrize("draft_kind", ["same", "random", "noisy"])
def test_clipped_speculation_is_lossless_and_keeps_rows_finishing_together(tiny, noisy, draft_kind):
    t = tiny["target"].model
    draft = {"same": t, "random": tiny["draft"].model, "noisy": noisy}[draft_kind]
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, t.config.vocab_size, (n,), generator=g).tolist() for n in (5, 11, 3, 8)]
    max_new = [20, 20, 20, 14]  # three rows in lockstep, one on its own
    plain = Engine(t).generate(prompts, [SamplingParams(max_new_tokens=n) for n in max_new], SpecParams())
    out, steps, dropped = _run(tiny, draft, Always, prompts, max_new)
    assert out == [r.token_ids for r in plain]
    assert steps[0] == steps[1] == steps[2]
    if draft_kind == "noisy":  # rows accept differently: only the clip holds them together
        assert dropped > 0
        out, steps, dropped = _run(tiny, draft, Unclipped, prompts, max_new)
        assert out == [r.token_ids for r in plain]
        assert dropped == 0
        assert len(set(steps[:3])) > 1


def test_rows_plain_decoding_ends_a_step_or_two_apart_group_when_equally_ahead():
    rows = [_row(30, generated=g) for g in (0, 1, 2, 3)]  # 30, 29, 28, 27 left
    for r in rows:
        r.plain_end = 40  # gains 10, 11, 12, 13 (plain_end - left): none as far ahead as another
    assert len(set(groups(rows))) == 4
    for r in rows:
        r.plain_end = r.left + 5  # all 5 tokens ahead; plain decoding ends them at 35, 34, 33, 32 ...
    ids = groups(rows, window=2)  # ... so the last three, within 2 steps of the earliest, group
    assert ids[1] == ids[2] == ids[3] != ids[0]
    assert len(set(groups(rows, window=0))) == 4  # window 0: one group per end step


def _run_staggered(tiny, draft, controller: type[KController], prompts, max_new: int, late: int):
    """As _run, but the last `late` rows arrive one step after the others (as HTTP clients do)."""
    engine = Engine(tiny["target"].model, draft, max_batch_size=len(prompts))
    engine.controllers["draft"] = controller(k_max=4)
    rows = [
        engine.make_row(p, SamplingParams(max_new_tokens=max_new), SpecParams("draft", 4, adaptive=True))
        for p in prompts
    ]
    for r in rows[:-late]:
        engine.add(r)
    done: dict[int, int] = {}
    step = 0
    while engine.has_work() or step == 1:
        step += 1
        if step == 2:
            for r in rows[-late:]:
                engine.add(r)
        done.update({id(r): step for r in engine.step()})
    return [r.generated for r in rows], [done[id(r)] for r in rows]


@pytest.mark.parametrize("draft_kind", ["random", "noisy"])
def test_rows_admitted_a_step_apart_keep_their_spread(tiny, noisy, draft_kind):
    """Equal lengths admitted over two steps: plain decoding ends them one step apart; clipped
    speculation keeps that (one group), where unclipped rows spread out."""
    t = tiny["target"].model
    draft = {"random": tiny["draft"].model, "noisy": noisy}[draft_kind]
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(2, t.config.vocab_size, (n,), generator=g).tolist() for n in (5, 11, 3, 8)]
    plain = Engine(t).generate(prompts, SamplingParams(max_new_tokens=24), SpecParams())
    out, steps = _run_staggered(tiny, draft, Always, prompts, 24, late=2)
    assert out == [r.token_ids for r in plain]
    assert steps[0] == steps[1] == steps[2] - 1 == steps[3] - 1
    if draft_kind == "noisy":
        out, steps = _run_staggered(tiny, draft, Unclipped, prompts, 24, late=2)
        assert out == [r.token_ids for r in plain]
        assert len(set(steps)) > 2


def test_a_large_lockstep_never_ends_on_the_models_word_alone():
    """One unclipped step ends a lockstep for good (rows drift apart, leave and are replaced one by
    one). In groups of eight, where the model promises unclipped speculation 2x plain but nothing
    unclipped was ever measured at this batch size, every speculative step stays clipped (a pair
    may still end on the model's word: test_controller_ends_a_small_lockstep_...)."""
    eight = _simulate(KController(k_max=4), 8, [8] * 8, accept=0.95, cost=0.1)
    assert sum(k > 0 for k, _ in eight) > 90 and all(clipped for k, clipped in eight if k)
