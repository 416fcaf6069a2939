"""Tiny float64 models and heads built in tests (random weights: exact equality, no downloads)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specserve.models.medusa import MedusaConfig, MedusaHeads

V = 12  # a small vocabulary: random heads then guess right often enough to exercise acceptance


def small_model(seed: int = 3, vocab: int = V) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=None)  # fmt: skip
    m = LlamaForCausalLM(cfg).double().eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(4.0)
    return m


def random_heads(model, num_heads: int = 3, seed: int = 4, share: bool = False) -> MedusaHeads:
    torch.manual_seed(seed)
    cfg = MedusaConfig(num_heads=num_heads, hidden_size=model.config.hidden_size,
                       vocab_size=model.config.vocab_size, share_lm_head=share, target="tiny")  # fmt: skip
    heads = MedusaHeads(cfg, model.lm_head if share else None).double().eval()
    with torch.no_grad():
        for p in heads.parameters():
            if not share or p is not model.lm_head.weight:
                p.normal_(0, 0.5)
    return heads
