"""Compiled decode steps are token-identical to eager ones in float64: every method, batch 1 and 4,
rows joining and leaving, the cache growing past its capacity mid-request (so graphs attend over a
new column capacity). One set of tiny models for the whole file: dynamo's graphs are per model."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_heads

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.cache import MIN_CAPACITY

PROMPT_LENS = (5, 11, 3, 40, 8, 2)
MAX_NEW = (24, 9, 50, 40, 30, 12)


@pytest.fixture(scope="module")
def heads(tiny):
    return random_heads(tiny["target"].model)


@pytest.fixture(scope="module")
def prompts(tiny):
    g = torch.Generator().manual_seed(4)
    vocab = tiny["target"].model.config.vocab_size
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def plain(tiny, prompts):
    engine = Engine(tiny["target"].model, eos_token_ids=tiny["target"].eos_token_ids)
    return [r.token_ids for r in engine.generate(prompts, _sampling(), SpecParams())]


def _sampling() -> list[SamplingParams]:
    return [SamplingParams(max_new_tokens=n) for n in MAX_NEW]


def test_some_request_outgrows_the_first_capacity():
    assert max(p + n for p, n in zip(PROMPT_LENS, MAX_NEW, strict=True)) > MIN_CAPACITY


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize(
    "method,draft",
    [("none", None), ("draft", "draft"), ("draft", "target"), ("ngram", None), ("medusa", None)],
)
def test_compiled_matches_eager(tiny, heads, prompts, plain, method, draft, batch_size):
    engine = Engine(
        tiny["target"].model,
        tiny[draft].model if draft else None,
        medusa=heads if method == "medusa" else None,
        eos_token_ids=tiny["target"].eos_token_ids,
        max_batch_size=batch_size,
        compile="on",
    )
    results = engine.generate(prompts, _sampling(), SpecParams(method, 3))
    assert [r.token_ids for r in results] == plain
    assert engine.compiled["target"].calls > 0  # the decode steps really ran compiled ...
    assert all(c.enabled for c in engine.compiled.values())  # ... to the end, no eager fallback
    if method == "draft":
        assert engine.compiled["draft"].calls > 0
        if draft == "target":  # a perfect draft: everything accepted, compiled or not
            assert all(r.stats.acceptance_rate == 1.0 for r in results)
