"""Compiled decode steps are token-identical to eager ones in float64: every method, batch 1 and 4,
rows joining and leaving, the cache growing past its capacity mid-request (so graphs attend over a
new column capacity). One set of tiny models for the whole file: dynamo's graphs are per model."""

from __future__ import annotations

import logging

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
    _assert_ran_compiled(engine, method)
    if draft == "target":  # a perfect draft: everything accepted, compiled or not
        assert all(r.stats.acceptance_rate == 1.0 for r in results)


@pytest.mark.parametrize("method", ["draft", "medusa"])
def test_fixed_shapes_match_eager(tiny, heads, prompts, plain, method):
    """The layout CUDA graphs get (rows padded to a power of two, the buffers' whole capacity),
    run here on the CPU: 3 slots for 6 requests, so 3 rows pad to 4 and rows come and go."""
    engine = Engine(
        tiny["target"].model,
        tiny["draft"].model if method == "draft" else None,
        medusa=heads if method == "medusa" else None,
        eos_token_ids=tiny["target"].eos_token_ids,
        max_batch_size=3,
        compile="on",
    )
    for c in engine.compiled.values():
        c.fixed_shapes = True
    results = engine.generate(prompts, _sampling(), SpecParams(method, 3))
    assert [r.token_ids for r in results] == plain
    _assert_ran_compiled(engine, method)


def _assert_ran_compiled(engine: Engine, method: str) -> None:
    assert engine.compiled["target"].calls > 0  # the decode steps really ran compiled ...
    assert all(c.enabled for c in engine.compiled.values())  # ... to the end, no eager fallback
    if method == "draft":
        assert engine.compiled["draft"].calls > 0


def _family(name: str):
    """A tiny float64 model of another family (random weights, a sharp lm_head)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(9)
    common = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    if name == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif name == "mistral":  # no sliding window: full attention
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=None))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=128))
    model = model.double().eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(4.0)
    return model


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gpt2"])
def test_other_families_compile_and_match(family):
    model = _family(family)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 96, (n,), generator=g).tolist() for n in (4, 9, 6)]
    sampling = [SamplingParams(max_new_tokens=n) for n in (20, 12, 16)]
    plain = Engine(model).generate(prompts, sampling, SpecParams())
    engine = Engine(model, max_batch_size=2, compile="on")
    results = engine.generate(prompts, sampling, SpecParams("ngram", 3))
    assert [r.token_ids for r in results] == [r.token_ids for r in plain]
    _assert_ran_compiled(engine, "ngram")


def test_one_graph_per_shape_on_the_engine_thread(caplog):
    """The engine steps on a thread of its own, where dynamo's config is its own: the recompile
    limit goes to torch.compile itself (under a thread limit of 1 both of the model's graphs
    compile; none falls back to eager). On that thread the tuner tries thread counts on the same
    steps: one graph per shape serves every count (dynamo used to guard on it, and each count
    compiled its own copy), each count's outputs those of eager forwards."""
    import threading

    import torch._dynamo.config as dynamo_config

    from specserve.decoding.compiled import CompiledForward
    from specserve.decoding.kv import KVState

    model = _family("qwen2").eval()  # a model of its own: its graphs compile here
    compiled = CompiledForward(model, "target")
    before = torch.get_num_threads()
    gaps: list[float] = []

    @torch.no_grad()  # (as the engine's steps)
    def run() -> None:
        with dynamo_config.patch(recompile_limit=1):
            kv, eager = KVState.empty(model, 1, compiled=compiled), KVState.empty(model, 1)
            for state in (kv, eager):
                state.forward(model, [[5, 6, 7, 8]], logits="last")
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                for width in (1, 3):
                    got, want = kv.forward(model, [[9] * width]), eager.forward(model, [[9] * width])
                    gaps.append(((got - want).abs().max() / want.abs().max()).item())  # relative

    caplog.set_level(logging.WARNING, logger="torch._dynamo")
    caplog.set_level(logging.INFO, logger="specserve.decoding.compiled")
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(600)
    torch.set_num_threads(before)
    assert compiled.enabled and compiled.calls == 6 and len(gaps) == 6
    assert max(gaps) < 1e-6  # (compiled kernels round otherwise: about 1e-7 of the logits here)
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()]
    assert compiled.compiles == len(compiled.graphs) == 2
    assert not [r for r in caplog.records if "compiled another graph" in r.getMessage()]


def test_a_graph_is_traced_once():
    """dynamo traces a model's Python float attributes (norm eps, rope scaling) as symbols under
    dynamic shapes, fails to make them tensors and traces the whole forward again: a second trace
    for every model's first graph at start-up. Floats are specialized: no compile restarts."""
    from torch._dynamo.utils import get_compilation_metrics

    from specserve.decoding.compiled import CompiledForward
    from specserve.decoding.kv import KVState

    model = _family("qwen2")  # a model of its own: its first graph compiles here
    compiled = CompiledForward(model, "target")
    seen = len(get_compilation_metrics())
    kv = KVState.empty(model, 1, compiled=compiled)
    kv.forward(model, [[5, 6, 7, 8]], logits="last")
    kv.forward(model, [[9]])
    metrics = get_compilation_metrics()[seen:]
    assert compiled.calls == 1 and metrics
    assert [m.restart_reasons for m in metrics] == [set()] * len(metrics)
