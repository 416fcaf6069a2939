"""Prefix caching: the same tokens as a full prefill, hits where a prompt starts like an earlier one,
the draft's cache too, and a byte bound kept by evicting the least recently used prompt."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_heads

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.kv import KVState
from specserve.decoding.prefix_cache import BLOCK, PrefixCache

LONG = [(7 * i) % 11 + 1 for i in range(2 * BLOCK + 5)]  # 37 tokens: two whole blocks and some
PROMPTS = [
    [1, 2, 3, 4],
    LONG,
    [1, 2, 3, 4],  # a repeat: all but its last token cached
    LONG[: 2 * BLOCK] + [9, 9, 9],  # shares LONG's first two blocks
    [5, 4, 3],  # new
    LONG,
]


@pytest.fixture(scope="module")
def setup(tiny):
    """The tiny float64 target (vocabulary 320: outputs that depend on the whole prompt), a random
    draft, random Medusa heads."""
    model = tiny["target"].model
    return model, tiny["draft"].model, random_heads(model)


def _run(setup, spec: SpecParams, batch_size: int, prefix_bytes: int, sampling=None):
    model, draft, heads = setup
    engine = Engine(model, draft, medusa=heads, max_batch_size=batch_size, prefix_cache_bytes=prefix_bytes)
    res = engine.generate(PROMPTS, sampling or SamplingParams(max_new_tokens=12), spec)
    return engine, res


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize(
    "spec",
    [
        SpecParams(),
        SpecParams("draft", 3),
        SpecParams("ngram", 2),
        SpecParams("medusa"),
        SpecParams.parse("draft", "auto"),
    ],  # fmt: skip
    ids=["none", "draft", "ngram", "medusa", "draft-auto"],
)
def test_same_tokens_as_without_the_cache(setup, spec, batch_size):
    _, plain = _run(setup, SpecParams(), 1, 0)
    engine, cached = _run(setup, spec, batch_size, 1 << 24)
    assert [r.token_ids for r in cached] == [r.token_ids for r in plain]
    hits = [r.stats.cached_tokens for r in cached]
    assert sum(hits) > 0 and hits[0] == 0 and hits[4] == 0  # first sight of a prompt: nothing cached
    if batch_size == 1:  # each prompt prefilled after the ones before it finished
        assert hits == [0, 0, 3, 2 * BLOCK, 0, len(LONG) - 1]
    if spec.method == "draft" and sum(r.stats.draft_tokens for r in cached):  # (auto may not draft)
        assert engine.prefix["draft"].entries  # the draft's lazy prefill found the prompts too


def test_sampled_rows_draw_the_same_with_and_without(setup):
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5)
    _, plain = _run(setup, SpecParams("draft", 3), 1, 0, sampling)
    _, cached = _run(setup, SpecParams("draft", 3), 1, 1 << 24, sampling)
    assert [r.token_ids for r in cached] == [r.token_ids for r in plain]


def test_prepared_rows_give_the_full_prefill_logits(setup):
    """Mixed hits and misses in one prefill, right-padded: logits at each row's last token."""
    model = setup[0]
    cache = PrefixCache(1 << 24)
    first = KVState.empty(model, 1)
    first.forward(model, [LONG], logits="last")
    cache.store(first, [LONG])
    seqs = [LONG[:BLOCK] + [3, 3], [2, 1], LONG]
    kv, fed = cache.prepare(model, seqs)
    assert [len(s) - len(f) for s, f in zip(seqs, fed, strict=True)] == [BLOCK, 0, len(LONG) - 1]
    got = kv.forward(model, fed, logits="last")  # [3, V]
    want = torch.stack([KVState.empty(model, 1).forward(model, [s], logits="last")[0] for s in seqs])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_bounded_in_bytes_least_recently_used_out(setup):
    model = setup[0]
    one = PrefixCache(1 << 24)
    kv = KVState.empty(model, 1)
    kv.forward(model, [[1, 2, 3, 4, 5]])
    one.store(kv, [[1, 2, 3, 4, 5]])
    room = 2 * one.nbytes  # two 5-token prompts fit, not three
    cache = PrefixCache(room)
    prompts = [[1, 2, 3, 4, 5], [2, 3, 4, 5, 6], [3, 4, 5, 6, 7]]
    for i, p in enumerate(prompts):
        kv = KVState.empty(model, 1)
        kv.forward(model, [p])
        cache.store(kv, [p])
        if i == 1:
            assert cache.lookup(prompts[0])[1] == 4  # touched: now the most recent
    assert cache.nbytes <= room and len(cache.entries) == 2
    assert cache.lookup(prompts[1]) == (None, 0)  # the least recently used went
    assert cache.lookup(prompts[0])[1] == 4 and cache.lookup(prompts[2])[1] == 4
    assert all(k in cache.entries for held in cache.holders.values() for k in held)  # none dangling


def test_an_evicted_entry_leaves_shared_blocks_to_the_others(setup):
    """B shares A's first two blocks; when B goes, A still answers for them."""
    model = setup[0]
    a = LONG
    b = LONG[: 2 * BLOCK] + [9, 9, 9, 9]
    c = [3] * 20

    def store(cache: PrefixCache, p: list[int]) -> None:
        kv = KVState.empty(model, 1)
        kv.forward(model, [p])
        cache.store(kv, [p])

    probe = PrefixCache(1 << 24)
    for p in (a, b):
        store(probe, p)
    cache = PrefixCache(probe.nbytes + 1)  # room for A and B, not for C as well
    store(cache, a)
    store(cache, b)
    assert cache.lookup(a[: 2 * BLOCK] + [5, 5])[1] == 2 * BLOCK
    assert cache.lookup(a)[1] == len(a) - 1  # touch A: B is now the least recently used
    store(cache, c)
    assert b[:-1] not in [list(k) for k in cache.entries] and tuple(a[:-1]) in cache.entries
    assert cache.lookup(a[: 2 * BLOCK] + [5, 5])[1] == 2 * BLOCK
