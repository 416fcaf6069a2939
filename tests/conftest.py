"""Tiny float64 Llama models built in fixtures and saved to disk, so the real loading path runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Tiny models run fastest on one thread, and a second OpenMP thread spinning against other load on a
# 2-core machine slows every op by orders of magnitude.
torch.set_num_threads(1)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
]


def build_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few lines of code: round-trips any text, vocabulary ~320."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CODE * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny(
    path: Path,
    tokenizer,
    *,
    layers: int,
    hidden: int,
    seed: int,
    vocab: int | None = None,
    logit_scale=1.0,
    heads: int = 4,
    kv_heads: int = 2,
) -> Path:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(torch.float64)
    with torch.no_grad():  # peakier distributions make sampling tests sensitive
        model.lm_head.weight.mul_(logit_scale)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory, tokenizer) -> dict[str, str]:
    """target (2 layers), a random draft (1 layer, other weights) and a draft with another vocabulary."""
    root = tmp_path_factory.mktemp("tiny")
    other_tok = build_tokenizer(vocab_size=300)
    return {
        "target": str(save_tiny(root / "target", tokenizer, layers=2, hidden=64, seed=0, logit_scale=8.0)),
        "draft": str(save_tiny(root / "draft", tokenizer, layers=1, hidden=32, seed=1, logit_scale=8.0)),
        "other_vocab": str(save_tiny(root / "other", other_tok, layers=1, hidden=32, seed=2)),
    }


@pytest.fixture(scope="session")
def tiny(tiny_paths):
    """Loaded float64 target and random draft (through models.load_model)."""
    from specserve.models.loading import load_model

    return {
        "target": load_model(tiny_paths["target"], dtype="float64"),
        "draft": load_model(tiny_paths["draft"], dtype="float64"),
    }


@pytest.fixture(scope="session")
def mha_float32(tmp_path_factory, tokenizer):
    """A one-layer float32 Llama of the bundled suite's kind: keys with as many heads as queries
    (attention runs on the CPU's flash kernel, which reads the cache buffers as they are) and a
    head size of 64, the compiled step's span step (a span that size once shared its symbol with
    the head size)."""
    from specserve.models.loading import load_model

    path = save_tiny(tmp_path_factory.mktemp("mha") / "target", tokenizer, layers=1, hidden=128, seed=0,
                     heads=2, kv_heads=2)  # fmt: skip
    return load_model(str(path), dtype="float32").model
