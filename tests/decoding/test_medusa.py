"""Medusa: tree buffers, greedy equivalence with plain decoding, exact sampling, heads I/O."""

from __future__ import annotations

import pytest
import torch
from scripted import Cycle
from tiny_models import V, random_heads, small_model

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.tree import build_tree
from specserve.models.medusa import MedusaHeads


@pytest.fixture(scope="module")
def setup():
    model = small_model()
    return model, random_heads(model)


def test_tree_buffers_table():
    t = build_tree([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)], num_heads=3)
    assert t.parent.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert t.depth.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert t.head[1:].tolist() == [0, 0, 1, 1, 1, 2] and t.rank[1:].tolist() == [0, 1, 0, 1, 0, 0]
    assert t.paths.tolist() == [[0, 1, 4, -1], [0, 2, 5, -1], [0, 1, 3, 6]]
    assert t.ancestors[6].tolist() == [True, True, False, True, False, False, True]
    assert t.children[1] == (3, 4) and t.children[6] == ()


@pytest.mark.parametrize(
    "choices,message",
    [
        ([(0,), (0, 0), (0, 0, 0)], "3 deep but there are only 2 Medusa heads"),
        ([(0,), (1, 0)], r"has no parent path \[1\]"),
        ([], "at least one path"),
    ],
)
def test_bad_trees_are_refused(choices, message):
    with pytest.raises(ValueError, match=message):
        build_tree(choices, num_heads=2)


def test_tree_deeper_than_heads_refused_by_engine(setup):
    model, heads = setup
    tree = build_tree([(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)], num_heads=4)
    with pytest.raises(ValueError, match="4 deep but there are only 3 Medusa heads"):
        Engine(model, medusa=heads, tree=tree)


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("share", [False, True])
def test_greedy_matches_plain(batch_size, share):
    model = small_model()
    heads = random_heads(model, share=share)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (3, 9, 5, 14)]
    sampling = [SamplingParams(max_new_tokens=n) for n in (30, 12, 25, 20)]
    plain = Engine(model, max_batch_size=batch_size).generate(prompts, sampling, SpecParams("none"))
    engine = Engine(model, medusa=heads, max_batch_size=batch_size)
    assert "medusa" in engine.methods
    res = engine.generate(prompts, sampling, SpecParams("medusa"))
    assert [r.token_ids for r in res] == [r.token_ids for r in plain]
    assert sum(r.stats.accepted_tokens for r in res) > 0  # the tree really accepted guesses
    assert max(r.stats.mean_accepted_length for r in res) > 1.0


def test_a_numeric_k_cuts_the_tree_to_that_depth(setup):
    model, heads = setup
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (3, 9, 5)]
    sampling = SamplingParams(max_new_tokens=20)
    plain = Engine(model).generate(prompts, sampling, SpecParams())
    for k, depth in ((1, 1), (2, 2), (16, 3)):  # the bundled default tree of 3 heads is 3 deep
        engine = Engine(model, medusa=heads, max_batch_size=3)
        seen = []
        engine.on_step = seen.append
        res = engine.generate(prompts, sampling, SpecParams("medusa", k))
        assert [r.token_ids for r in res] == [r.token_ids for r in plain]
        assert max(s.k for s in seen if s.phase == "decode") == depth


def test_mixed_with_other_methods_and_rows_joining(setup):
    model, heads = setup
    engine = Engine(model, model, medusa=heads, max_batch_size=2)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [2, 2, 2, 2], [9, 1]]
    specs = [SpecParams("medusa"), SpecParams("draft", 3), SpecParams("medusa"), SpecParams("ngram", 2)]
    res = engine.generate(prompts, SamplingParams(max_new_tokens=15), specs)
    plain = Engine(model).generate(prompts, SamplingParams(max_new_tokens=15), SpecParams())
    assert [r.token_ids for r in res] == [r.token_ids for r in plain]


def _adaptive_run(model, heads, policy, prompts, max_new: list[int], batch_size: int):
    """Decode with `auto` Medusa under a scripted policy: tokens, finishing step, Ks, rows."""
    engine = Engine(model, medusa=heads, max_batch_size=batch_size)
    engine.policy = policy
    ks: list[int] = []
    engine.on_step = lambda s: ks.append(s.k) if s.phase == "decode" else None
    rows = [
        engine.make_row(p, SamplingParams(max_new_tokens=n), SpecParams.parse("medusa", "auto"))
        for p, n in zip(prompts, max_new, strict=True)
    ]
    for r in rows:
        engine.add(r)
    done, step = {}, 0
    while engine.has_work():
        step += 1
        done.update({id(r): step for r in engine.step()})
    return [r.generated for r in rows], [done[id(r)] for r in rows], ks, rows


@pytest.mark.parametrize("batch_size", [1, 4])
def test_adaptive_depth_matches_plain(setup, batch_size):
    """`auto` Medusa: K is the tree's depth, 0 a plain step that still feeds the heads."""
    model, heads = setup
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (3, 9, 5, 14)]
    max_new = [30, 12, 25, 20]
    plain = Engine(model).generate(prompts, [SamplingParams(max_new_tokens=n) for n in max_new], SpecParams())
    out, _, ks, rows = _adaptive_run(model, heads, Cycle(), prompts, max_new, batch_size)
    assert out == [r.token_ids for r in plain]
    assert {0, 1, 2, 3} <= set(ks)  # plain steps and every depth of the tree
    assert sum(r.stats.accepted_tokens for r in rows) > 0


def test_heads_save_load_round_trip(setup, tmp_path):
    model, heads = setup
    heads.save(tmp_path / "heads")
    loaded = MedusaHeads.load(tmp_path / "heads", model)
    h = torch.randn(2, model.config.hidden_size, dtype=torch.float64)
    assert torch.equal(heads(h), loaded(h))
    assert loaded.config.target == "tiny" and len({id(b) for b in loaded.blocks}) == 3  # distinct modules
    with pytest.raises(ValueError, match="hidden size 32 and vocabulary 12"):
        MedusaHeads.load(tmp_path / "heads", small_model(vocab=13))
    with pytest.raises(ValueError, match="no Medusa heads"):
        MedusaHeads.load(tmp_path / "missing", model)
