"""The draft proposer: seeded rows sample in step with the target (their tokens are plain
sampling's whatever K), rows at K = 0 in a speculating batch are not drafted for, and a draft
restricted to a reduced vocabulary proposes token ids from it."""

from __future__ import annotations

import copy

import pytest
import torch
from scripted import Always, Cycle

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding import draft as draft_mod
from specserve.decoding.draft import DraftProposer
from specserve.metrics.accounting import build_accountant
from specserve.metrics.peaks import Peaks
from specserve.models.draft_vocab import restrict_model

PROMPTS = [[5, 6, 7, 5, 6, 7, 5], [9, 10, 11, 9, 10], [12, 13, 14], [3, 4, 3, 4, 3, 4, 3, 4]]


def _draft(tiny, kind: str):
    return {"same": tiny["target"].model, "random": tiny["draft"].model}[kind]


@pytest.mark.parametrize("kind", ["same", "random"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_seeded_draft_sampling_equals_plain_sampling_whatever_k(tiny, kind, batch_size):
    """A seeded row's draft draws candidate j with the uniform the target draws position j with, and
    the target keeps it only where its own draw equals it: every token is plain sampling's. So the
    output does not depend on K, on the draft, or on an unseeded neighbour (which keeps rejection
    sampling)."""
    t = tiny["target"].model
    seeded = [SamplingParams(max_new_tokens=24, temperature=0.9, top_k=20, seed=s) for s in (3, 4, 5)]
    sampling = seeded + [SamplingParams(max_new_tokens=24, temperature=0.9)]  # unseeded neighbour
    plain = [r.token_ids for r in Engine(t).generate(PROMPTS[:3], seeded, SpecParams())]
    for k in (1, 3, 5):
        engine = Engine(t, _draft(tiny, kind), max_batch_size=batch_size)
        out = engine.generate(PROMPTS, sampling, SpecParams("draft", k))
        assert [r.token_ids for r in out[:3]] == plain, k
        if kind == "same":  # a draft that is the target: its coupled draws are always matched
            assert all(r.stats.accepted_tokens == r.stats.draft_tokens for r in out[:3])


def test_seeded_draft_rows_are_not_pinned_to_a_k(tiny):
    """Under "auto" a seeded draft row takes the K the step chose, like any other row."""
    t, d = tiny["target"].model, tiny["draft"].model
    sampling = SamplingParams(max_new_tokens=8, temperature=0.9, seed=1)
    spec = SpecParams.parse("draft", "auto")
    assert spec.step_k(0) == 0 and spec.step_k(2) == 2
    engine = Engine(t, d)
    row = engine.make_row(PROMPTS[0], sampling, spec)
    assert row.spec.step_k(1) == 1


@pytest.mark.parametrize("kind", ["same", "random"])
def test_rows_at_k0_are_not_fed_to_the_draft_and_catch_up_later(tiny, kind):
    """In a batch where one row speculates and the others run at K = 0, the draft feeds only the
    speculating row; the others lag and catch up when they next speculate. Greedy output stays
    plain decoding's (float64)."""
    t = tiny["target"].model
    sampling = SamplingParams(max_new_tokens=20)
    plain = [r.token_ids for r in Engine(t).generate(PROMPTS, sampling, SpecParams())]
    fixed = [SpecParams("draft", 4)] + [SpecParams("draft", 4, adaptive=True)] * 3
    engine = Engine(t, _draft(tiny, kind), max_batch_size=4)
    fed: list[list[int]] = []
    forward = DraftProposer.__dict__["propose"]

    def spy(self, rows, ks, warp, u):
        before = self.kv.seen.clone()
        prop = forward(self, rows, ks, warp, u)
        if max(ks):
            fed.append([int(x) for x in (self.kv.seen - before).tolist()])
        return prop

    DraftProposer.propose = spy
    try:
        # the adaptive rows are told K = 0 for 6 steps, then K = 2: the fixed row always drafts 4
        engine.policy = Cycle((0,) * 6 + (2,) * 100)
        out = engine.generate(PROMPTS, sampling, fixed)
    finally:
        DraftProposer.propose = forward
    assert [r.token_ids for r in out] == plain
    early = fed[1]  # a steady step while the others sit at K = 0: only row 0 moved in the draft
    assert early[0] > 0 and early[1:] == [0, 0, 0]
    assert any(all(x > 0 for x in f) for f in fed[6:])  # later they speculate: caught up, fed


def test_a_batch_where_no_row_drafts_skips_the_draft(tiny):
    t, d = tiny["target"].model, tiny["draft"].model
    roles: list[str] = []
    engine = Engine(t, d, on_step=lambda stats: roles.extend(f.model for f in stats.forwards))
    engine.policy = Always(0)
    out = engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=6), SpecParams.parse("draft", "auto"))
    assert all(r.stats.draft_tokens == 0 for r in out)
    assert "target" in roles and "draft" not in roles  # not even the rows' draft prefill ran


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
    engine.policy = Cycle()
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


@pytest.mark.parametrize("batch_size,compile", [(1, "off"), (4, "off"), (2, "on")])
def test_a_draft_with_a_reduced_vocabulary_keeps_greedy_identity(tiny, batch_size, compile, monkeypatch):
    """The target as its own draft, restricted to the even token ids: its candidates are token ids
    from them (right wherever the target's next token is even), and the output is plain's."""
    t = tiny["target"].model
    d = copy.deepcopy(t)
    V = t.get_output_embeddings().weight.shape[0]
    restrict_model(d, torch.arange(0, V, 2))
    proposed, propose = [], DraftProposer.propose

    def spy(self, *args):
        prop = propose(self, *args)
        proposed.extend(x for row in prop.tokens for x in row)
        return prop

    monkeypatch.setattr(draft_mod.DraftProposer, "propose", spy)
    sampling = SamplingParams(max_new_tokens=20)
    plain = [r.token_ids for r in Engine(t).generate(PROMPTS, sampling, SpecParams())]
    out = Engine(t, d, max_batch_size=batch_size, compile=compile).generate(
        PROMPTS, sampling, SpecParams("draft", 4)
    )
    assert [r.token_ids for r in out] == plain
    assert proposed and all(x % 2 == 0 for x in proposed) and any(x % 2 for p in plain for x in p)
    assert sum(r.stats.accepted_tokens for r in out) >= sum(x % 2 == 0 for p in plain for x in p) // 2
