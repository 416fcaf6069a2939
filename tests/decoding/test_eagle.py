"""EAGLE: greedy identity with plain decoding (a random head, a head that copies the target), rows
joining, plain stretches, the pending-feature cap, the prefix cache, compiled steps and accounting."""

from __future__ import annotations

import pytest
import torch
from scripted import Cycle
from tiny_models import V, attentionless_model, copying_eagle, eagle_at, random_eagle, small_model

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding import eagle as eagle_mod
from specserve.decoding.eagle import append_pending, last_pending
from specserve.decoding.params import AUTO_MAX_TOKENS

LENS, NEW = (3, 9, 5, 14), (30, 12, 25, 20)


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in LENS]


def _plain(model, prompts, batch_size=4):
    sampling = [SamplingParams(max_new_tokens=n) for n in NEW]
    return [
        r.token_ids
        for r in Engine(model, max_batch_size=batch_size).generate(prompts, sampling, SpecParams())
    ]


def _eagle(engine, prompts, spec):
    return engine.generate(prompts, [SamplingParams(max_new_tokens=n) for n in NEW], spec)


def test_append_pending_writes_in_place_while_the_buffer_has_room():
    feats = torch.tensor([[[1.0], [2.0], [9.0], [9.0]], [[9.0], [9.0], [9.0], [9.0]]])  # [2, 4, 1]
    new = torch.tensor([[[3.0], [9.0]], [[4.0], [5.0]]])  # [2, 2, 1]: row 0 takes 1, row 1 takes 2
    out, n = append_pending(feats, torch.tensor([2, 0]), new, torch.tensor([1, 2]))
    assert out.data_ptr() == feats.data_ptr()  # no copy of the rows' pending features
    assert n.tolist() == [3, 2]
    assert out[0, :3, 0].tolist() == [1.0, 2.0, 3.0] and out[1, :2, 0].tolist() == [4.0, 5.0]


def test_append_pending_past_the_buffer_keeps_each_rows_last_cap():
    feats = torch.tensor([[[1.0], [2.0], [3.0]], [[7.0], [9.0], [9.0]]])  # [2, 3, 1]: 3 and 1 held
    new = torch.tensor([[[4.0]], [[8.0]]])  # [2, 1, 1]
    out, n = append_pending(feats, torch.tensor([3, 1]), new, torch.tensor([1, 1]), cap=2)
    assert out.shape[1] == 2 * 2 + 1  # room for cap more before the next gather
    assert n.tolist() == [3, 2]
    assert out[0, :3, 0].tolist() == [2.0, 3.0, 4.0] and out[1, :2, 0].tolist() == [7.0, 8.0]


def test_last_pending_left_aligns_each_rows_newest():
    feats = torch.tensor([[[1.0], [2.0], [3.0]], [[7.0], [8.0], [9.0]]])  # [2, 3, 1]
    out = last_pending(feats, torch.tensor([3, 2]), torch.tensor([2, 1]))
    assert out[0, :, 0].tolist() == [2.0, 3.0] and out[1, 0, 0].item() == 8.0


@pytest.mark.parametrize("batch_size", [1, 4, 2])  # 2: four requests through two slots (rows join)
@pytest.mark.parametrize("k", ["1", "4", "auto"])
def test_random_head_greedy_matches_plain(model, prompts, batch_size, k):
    engine = Engine(model, eagle=random_eagle(model), max_batch_size=batch_size)
    assert "eagle" in engine.methods
    res = _eagle(engine, prompts, SpecParams.parse("eagle", k))
    assert [r.token_ids for r in res] == _plain(model, prompts)
    if k != "auto":  # (auto may judge a random head not worth a step)
        assert sum(r.stats.accepted_tokens for r in res) > 0  # some guesses were right


@pytest.mark.parametrize("batch_size", [1, 4])
def test_a_head_that_copies_the_target_accepts_everything(prompts, batch_size):
    target = attentionless_model()
    engine = Engine(target, eagle=copying_eagle(target), max_batch_size=batch_size)
    res = _eagle(engine, prompts, SpecParams("eagle", 4))
    assert [r.token_ids for r in res] == _plain(target, prompts)
    assert all(r.stats.acceptance_rate == 1.0 for r in res)
    assert max(r.stats.mean_accepted_length for r in res) > 3.0


@pytest.mark.parametrize("batch_size,compile", [(1, "off"), (4, "off"), (2, "on")])
def test_a_bfloat16_head_keeps_greedy_identity(model, prompts, batch_size, compile, tmp_path):
    """--eagle-dtype bfloat16 on a float64 target: q is the head's, whatever its precision."""
    head = eagle_at(random_eagle(model), model, torch.bfloat16, tmp_path / "h")
    engine = Engine(model, eagle=head, max_batch_size=batch_size, compile=compile)
    res = _eagle(engine, prompts, SpecParams("eagle", 4))
    assert [r.token_ids for r in res] == _plain(model, prompts)
    assert sum(r.stats.accepted_tokens for r in res) > 0


@pytest.mark.parametrize("batch_size,compile", [(1, "off"), (4, "off"), (2, "on")])
def test_a_reduced_draft_vocabulary_keeps_greedy_identity(model, prompts, batch_size, compile, monkeypatch):
    """EAGLE-3's reduced draft vocabulary: candidates come from it only, the output is plain's."""
    head = random_eagle(model)
    head.restrict(torch.arange(0, V, 2))  # even tokens: the odd ones plain decoding emits are never guessed
    proposed, propose = [], eagle_mod.EagleProposer.propose

    def spy(self, *args):
        prop = propose(self, *args)
        proposed.extend(t for row in prop.tokens for t in row)
        return prop

    monkeypatch.setattr(eagle_mod.EagleProposer, "propose", spy)
    engine = Engine(model, eagle=head, max_batch_size=batch_size, compile=compile)
    res = _eagle(engine, prompts, SpecParams("eagle", 4))
    want = _plain(model, prompts)
    assert [r.token_ids for r in res] == want
    assert proposed and set(proposed) <= set(range(0, V, 2)) < {t for w in want for t in w} | set(
        range(0, V, 2)
    )
    assert sum(r.stats.accepted_tokens for r in res) > 0


def test_plain_stretches_and_joining_rows_keep_identity(model, prompts, monkeypatch):
    """K = 0 steps pile up pending features (capped small here: old context dropped), fixed-K and
    auto rows share the sub-batch, rows join as others leave."""
    monkeypatch.setattr(eagle_mod, "MAX_PENDING", 4)
    engine = Engine(model, eagle=random_eagle(model), max_batch_size=2)
    engine.policy = Cycle()
    fed: list[int] = []  # entries the head was fed per row, forward by forward
    engine.on_step = lambda st: fed.extend(t for f in st.forwards if f.model == "eagle" for t in f.tokens)
    specs = [SpecParams.parse("eagle", k) for k in ("auto", "2", "auto", "auto")]
    res = engine.generate(prompts, [SamplingParams(max_new_tokens=n) for n in NEW], specs)
    assert [r.token_ids for r in res] == _plain(model, prompts)
    assert max(fed) == 4  # a catch-up after a plain stretch: the last MAX_PENDING entries only
    proposer = engine.batches["eagle"].proposer
    assert proposer.feats.shape[1] <= 2 * 4 + AUTO_MAX_TOKENS + 1 and proposer.kv.batch_size == 0


def test_copying_head_with_the_prefix_cache_and_compiled_steps(prompts):
    """A prefix-cache hit feeds the target (and so the head) only the prompt's rest; compiled
    steps run the target's and the head's forwards compiled."""
    target = attentionless_model()
    shared = [prompts[3] + p for p in prompts]
    plain = Engine(target, max_batch_size=4).generate(shared, SamplingParams(max_new_tokens=12), SpecParams())
    for kw in ({"prefix_cache_bytes": 1 << 20}, {"compile": "on"}):
        engine = Engine(target, eagle=copying_eagle(target), max_batch_size=2, **kw)
        res = engine.generate(shared, SamplingParams(max_new_tokens=12), SpecParams("eagle", 3))
        assert [r.token_ids for r in res] == [r.token_ids for r in plain]
        assert all(r.stats.acceptance_rate == 1.0 for r in res)
    assert sum(r.stats.cached_tokens for r in res) == 0
    assert engine.compiled["target"].calls > 0 and engine.compiled["eagle"].calls > 0


def test_head_forwards_are_accounted(model, prompts):
    from types import SimpleNamespace

    from specserve.metrics.accounting import build_accountant

    target = SimpleNamespace(model=model, weight_bytes=1000, non_embedding_params=10)
    head = random_eagle(model)
    engine = Engine(model, eagle=head)
    engine.charge = build_accountant(target, eagle=head)
    seen = []
    engine.on_step = seen.append
    res = engine.generate(prompts[:1], SamplingParams(max_new_tokens=8), SpecParams("eagle", 3))
    decode = [s for s in seen if s.phase == "decode" and s.k > 0]
    assert decode and all("eagle" in s.bytes_read and s.bytes_read["eagle"]["weights"] > 0 for s in decode)
    assert res[0].stats.bytes_read > 1000 * len(seen)  # the target's weights and the head's


def test_catching_up_after_plain_steps_is_reported_as_switching_cost(model, prompts):
    """A speculative step after plain ones feeds the head what they piled up: its `sync_s` (which the
    K policy leaves out of speculation's cost) is that catch-up; back-to-back speculative steps
    report none."""

    class Spy(Cycle):
        def observe(self, stats, seconds, sampled=None):
            super().observe(stats, seconds)
            self.seen_at.append((stats.k, stats.sync_s))

    spy = Spy((0, 0, 0, 0, 2, 2, 2))
    spy.seen_at = []
    engine = Engine(model, eagle=random_eagle(model))
    engine.policy = spy
    engine.generate(prompts[:1], SamplingParams(max_new_tokens=40), SpecParams.parse("eagle", "auto"))
    after_plain = [s for (k, s), (k0, _) in zip(spy.seen_at[1:], spy.seen_at, strict=False) if k and not k0]
    steady = [s for (k, s), (k0, _) in zip(spy.seen_at[1:], spy.seen_at, strict=False) if k and k0]
    assert after_plain and all(s > 0 for s in after_plain)
    assert steady and all(s == 0 for s in steady)
