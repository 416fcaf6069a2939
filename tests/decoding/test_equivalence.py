"""Central test (after transformers' test_assisted_decoding_matches_greedy_search): every method is
token-identical to plain greedy decoding and to Hugging Face generate(), with a *random* draft and
with the target as its own draft (random Medusa heads: a tree per step; a random EAGLE head), at
batch 1 and batch 4 with unequal prompt lengths, and through fewer slots than requests (rows join as
others leave)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_eagle, random_heads

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.step import decode_step

PROMPT_LENS = (5, 11, 3, 17)
MAX_NEW = (24, 9, 30, 16)


@pytest.fixture(scope="module")
def prompts(tiny):
    g = torch.Generator().manual_seed(0)
    vocab = tiny["target"].model.config.vocab_size
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def hf_reference(tiny, prompts):
    model = tiny["target"].model
    out = []
    for p, n in zip(prompts, MAX_NEW, strict=True):
        ids = model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False)
        out.append(ids[0, len(p) :].tolist())
    return out


def _engine(tiny, draft_kind: str | None, batch_size: int, **kw) -> Engine:
    draft = {None: None, "random": tiny["draft"].model, "same": tiny["target"].model}.get(draft_kind)
    if draft_kind == "heads":
        kw["medusa"] = random_heads(tiny["target"].model)
    if draft_kind == "eagle":
        kw["eagle"] = random_eagle(tiny["target"].model)
    return Engine(
        tiny["target"].model,
        draft,
        eos_token_ids=tiny["target"].eos_token_ids,
        max_batch_size=batch_size,
        **kw,
    )


CASES = [
    ("none", None, 1),
    ("draft", "random", 1),
    ("draft", "same", 1),
    ("draft", "random", 4),
    ("draft", "same", 4),
    ("ngram", None, 4),
    ("ngram", None, 1),
    ("none", None, 4),
    ("draft", "random", 2),  # 4 requests through 2 slots: rows join as others leave
    ("ngram", None, 3),
    ("medusa", "heads", 1),
    ("medusa", "heads", 4),
    ("medusa", "heads", 2),
    ("eagle", "eagle", 1),
    ("eagle", "eagle", 4),
    ("eagle", "eagle", 2),
]


@pytest.mark.parametrize("method,draft,batch_size", CASES)
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_matches_plain_and_hf(tiny, prompts, hf_reference, method, draft, batch_size, k):
    engine = _engine(tiny, draft, batch_size)
    sampling = [SamplingParams(max_new_tokens=n) for n in MAX_NEW]
    results = engine.generate(prompts, sampling, SpecParams(method, k))
    assert [r.token_ids for r in results] == hf_reference
    for r, n in zip(results, MAX_NEW, strict=True):
        assert r.finish_reason in ("stop", "length")
        assert r.stats.completion_tokens == len(r.token_ids) <= n
    if draft == "same":  # a perfect draft: everything accepted
        assert all(r.stats.acceptance_rate == 1.0 for r in results)
        assert max(r.stats.mean_accepted_length for r in results) > 1.0


def test_kv_invariants_after_every_commit(tiny, prompts):
    """Target: valid length == tokens - 1. Draft: has seen every accepted token (lags by 1, or 2 after
    a full accept, where the last candidate was never fed)."""
    checked = {"steps": 0, "full_accepts": 0}
    engine = _engine(tiny, "same", 4)

    def check(stats):
        for batch in engine.batches.values():
            kv = batch.kv
            assert kv.seen.tolist() == kv.mask.sum(1).tolist()
            live = [
                i for i, r in enumerate(batch.rows) if not r.finish_reason
            ]  # finished rows hold a cut run
            seen = kv.seen.tolist()
            assert [seen[i] for i in live] == [len(batch.rows[i].tokens) - 1 for i in live]
            if batch.method == "draft" and stats.phase == "decode":
                draft_seen = batch.proposer.kv.seen.tolist()
                for i in live:
                    lag = len(batch.rows[i].tokens) - draft_seen[i]
                    assert lag in (1, 2)
                    checked["full_accepts"] += lag == 2
            checked["steps"] += 1

    engine.on_step = check
    engine.generate(prompts, [SamplingParams(max_new_tokens=n) for n in MAX_NEW], SpecParams("draft", 3))
    assert checked["steps"] > 5 and checked["full_accepts"] > 0


def test_rows_join_mid_way(tiny, prompts, hf_reference):
    """Requests added while others are mid-generation decode exactly as alone."""
    engine = _engine(tiny, "random", 4)
    spec = SpecParams("draft", 3)
    rows = [engine.make_row(prompts[0], SamplingParams(max_new_tokens=MAX_NEW[0]), spec)]
    engine.add(rows[0])
    for i in range(1, 4):
        for _ in range(2):  # let the running rows take steps before the next one joins
            engine.step()
        rows.append(engine.make_row(prompts[i], SamplingParams(max_new_tokens=MAX_NEW[i]), spec))
        engine.add(rows[-1])
    while engine.has_work():
        engine.step()
    assert [r.generated for r in rows] == hf_reference
    assert max(r.stats.mean_batch_size for r in rows) > 1


def test_mixed_methods_in_one_engine(tiny, prompts, hf_reference):
    engine = _engine(tiny, "random", 4)
    specs = [SpecParams("none"), SpecParams("draft", 2), SpecParams("ngram", 3), SpecParams("draft", 4)]
    results = engine.generate(prompts, [SamplingParams(max_new_tokens=n) for n in MAX_NEW], specs)
    assert [r.token_ids for r in results] == hf_reference
    assert [r.stats.method for r in results] == [s.method for s in specs]


def test_eos_inside_accepted_run_is_truncated(tiny, prompts, hf_reference):
    """Make a token from the middle of a greedy run the EOS: a perfect draft accepts runs through
    it, and everything after it must be discarded."""
    ref = hf_reference[2]
    eos = ref[7]
    first = ref.index(eos)
    engine = Engine(tiny["target"].model, tiny["target"].model, eos_token_ids=(eos,), max_batch_size=1)
    res = engine.generate([prompts[2]], SamplingParams(max_new_tokens=30), SpecParams("draft", 4))[0]
    assert res.token_ids == ref[: first + 1]
    assert res.finish_reason == "stop"
    # without discards every forward emits its accepted tokens + 1: fewer emitted means a run was cut
    assert res.stats.completion_tokens < res.stats.accepted_tokens + res.stats.target_forwards


def test_decode_step_stats_add_up(tiny, prompts):
    engine = _engine(tiny, "random", 4)
    seen = []
    engine.on_step = seen.append
    results = engine.generate(prompts, SamplingParams(max_new_tokens=12), SpecParams("draft", 3))
    decode = [s for s in seen if s.phase == "decode"]
    assert sum(s.draft_tokens for s in decode) == sum(r.stats.draft_tokens for r in results)
    assert sum(s.accepted_tokens for s in decode) == sum(r.stats.accepted_tokens for r in results)
    assert sum(sum(s.accepted_per_position) for s in decode) == sum(s.accepted_tokens for s in decode)
    assert all(s.verify_s > 0 and s.propose_s > 0 for s in decode)
    assert decode_step.__doc__  # the step is a plain function over explicit state


def test_steps_record_every_forward(tiny, prompts):
    """The facts bytes/FLOPs accounting needs: each model forward, its tokens per row, its columns."""
    engine = _engine(tiny, "random", 4)
    seen = []
    engine.on_step = seen.append
    engine.generate(prompts, SamplingParams(max_new_tokens=12), SpecParams("draft", 3))
    prefill = [s for s in seen if s.phase == "prefill"][0]
    assert [f.model for f in prefill.forwards] == ["target"]  # the draft syncs at its first proposal
    assert prefill.forwards[0].tokens == [len(p) for p in prompts] and prefill.forwards[0].columns == 0
    first, step = [s for s in seen if s.phase == "decode" and s.k == 3][:2]
    assert [f.model for f in first.forwards] == ["draft"] * 4 + ["target"]  # + the draft's prefill
    assert first.forwards[0].tokens == [len(p) for p in prompts] and first.forwards[0].columns == 0
    assert [f.model for f in step.forwards] == ["draft"] * 3 + ["target"]  # catch-up + K-1, then verify
    verify = step.forwards[-1]
    assert sum(verify.tokens) == step.tokens_verified and verify.columns > 0
