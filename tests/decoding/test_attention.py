"""Sliding-window and hybrid models through the batched engine: token-identical to Hugging Face
generate() in float64 with a window much shorter than the context (so it bites), rows of unequal
lengths with holes, every method; a window as long as the context is full attention; a model with
another kind of layer is refused when it loads, in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tiny_models import random_heads
from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
)

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.attention import AttentionLayout, UnsupportedModel
from specserve.models.loading import load_model

WINDOW = 5
V = 64
PROMPT_LENS = (3, 9, 14, 6)
MAX_NEW = (20, 12, 16, 9)
COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, tie_word_embeddings=False)  # fmt: skip

CONFIGS = {
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=WINDOW),  # every layer sliding
    "phi3": lambda: Phi3Config(**COMMON, sliding_window=WINDOW),
    "qwen2": lambda: Qwen2Config(
        **COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1
    ),
    "gemma2": lambda: Gemma2Config(**COMMON, head_dim=8, sliding_window=WINDOW),  # sliding / full
    "gemma3": lambda: Gemma3TextConfig(
        **COMMON, head_dim=8, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]
    ),  # fmt: skip
}


def _save_and_load(config, path):
    """config -> save_pretrained -> the engine's own loader (the path users take)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).double()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(6.0)  # peaky: long runs of agreement
    model.save_pretrained(path)
    _tokenizer_files(path)
    return load_model(str(path), dtype="float64")


def _tokenizer_files(path) -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(V)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                  pad_token="t0", bos_token="t1", eos_token="t2")  # fmt: skip
    tok.save_pretrained(path)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def windowed(request, tmp_path_factory):
    loaded = _save_and_load(CONFIGS[request.param](), tmp_path_factory.mktemp(request.param))
    layout = AttentionLayout.of(loaded.model.config)
    assert layout.window == WINDOW
    assert layout.mixed == (request.param in ("qwen2", "gemma2", "gemma3"))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, V, (n,), generator=g).tolist() for n in PROMPT_LENS]
    hf = []
    for p, n in zip(prompts, MAX_NEW, strict=True):
        out = loaded.model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, eos_token_id=None)
        hf.append(out[0, len(p) :].tolist())
    return loaded, prompts, hf


@pytest.mark.parametrize(
    "method,batch_size,draft",
    [("none", 4, None), ("none", 2, None), ("ngram", 4, None), ("draft", 3, "same"), ("medusa", 2, None)],
)
def test_windowed_models_match_hf_generate(windowed, method, batch_size, draft):
    loaded, prompts, hf = windowed
    model = loaded.model
    kw = {"medusa": random_heads(model)} if method == "medusa" else {}
    engine = Engine(model, model if draft else None, max_batch_size=batch_size, **kw)
    sampling = [SamplingParams(max_new_tokens=n, ignore_eos=True) for n in MAX_NEW]
    results = engine.generate(prompts, sampling, SpecParams(method, 3))
    assert [r.token_ids for r in results] == hf
    assert max(len(p) + n for p, n in zip(prompts, MAX_NEW, strict=True)) > 4 * WINDOW  # the window bites


def test_a_window_as_long_as_the_context_is_full_attention():
    assert AttentionLayout.of(MistralConfig(**COMMON, sliding_window=128)) == AttentionLayout(None, False)
    assert AttentionLayout.of(MistralConfig(**COMMON, sliding_window=None)) == AttentionLayout(None, False)
    assert AttentionLayout.of(Qwen2Config(**COMMON, use_sliding_window=False)).window is None
    assert AttentionLayout.of(LlamaConfig(**COMMON)).window is None


def _unsupported(path):
    config = LlamaConfig(**COMMON)
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(config).save_pretrained(path)
    _tokenizer_files(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["layer_types"] = ["full_attention", "linear_attention"]
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_another_kind_of_layer_is_refused_at_load_time(tmp_path):
    path = _unsupported(tmp_path / "linear")
    with pytest.raises(ValueError, match="linear_attention are not supported") as e:
        load_model(str(path))
    assert "\n" not in str(e.value)
    with pytest.raises(UnsupportedModel):
        AttentionLayout.of(LlamaConfig(**COMMON, layer_types=["chunked_attention", "full_attention"]))
    for argv in (["generate", "--target", str(path), "--prompt", "x", "--compile", "off"],
                 ["serve", "--target", str(path), "--port", "1"]):  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "specserve", *argv], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert out.returncode != 0
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith("error: ") and "linear_attention" in lines[-1], out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.parametrize("family", ["gemma2"])  # mixed: a mask per layer kind through the graph
def test_compiled_windowed_steps_match(family, tmp_path):
    """The compiled step builds the same masks (one tensor, or one per layer kind) over its span."""
    model = _save_and_load(CONFIGS[family](), tmp_path / family).model
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, V, (n,), generator=g).tolist() for n in (4, 11, 7)]
    sampling = [SamplingParams(max_new_tokens=n, ignore_eos=True) for n in (18, 10, 14)]
    plain = Engine(model).generate(prompts, sampling, SpecParams())
    engine = Engine(model, max_batch_size=2, compile="on")
    results = engine.generate(prompts, sampling, SpecParams("ngram", 3))
    assert [r.token_ids for r in results] == [r.token_ids for r in plain]
    assert (
        engine.compiled["target"].enabled and engine.compiled["target"].calls > 0
    )  # ran compiled, to the end
