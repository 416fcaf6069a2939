"""Tiny float64 models and heads built in tests (random weights: exact equality, no downloads)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specserve.models.eagle import EagleConfig, EagleHead
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


def random_eagle(model, seed: int = 6) -> EagleHead:
    """An EAGLE head with random weights for `model` (it guesses right now and then, at V = 12)."""
    torch.manual_seed(seed)
    head = EagleHead(EagleConfig.for_target(model, "tiny"), model).double().eval()
    with torch.no_grad():
        for p in head.own_parameters():
            p.normal_(0, 0.3)
    return head


def eagle_at(head: EagleHead, target, dtype: torch.dtype, folder) -> EagleHead:
    """`head` saved to `folder` and loaded back for `target` at another precision (`--eagle-dtype`)."""
    head.save(folder)
    return EagleHead.load(folder, target, dtype)


def attentionless_model(seed: int = 7) -> LlamaForCausalLM:
    """One layer whose attention output is zero: each position's last hidden state depends on its
    own token only (so an EAGLE head can copy the target exactly)."""
    m = small_model(seed)
    m.model.layers = m.model.layers[:1]
    m.config.num_hidden_layers = 1
    with torch.no_grad():
        m.model.layers[0].self_attn.o_proj.weight.zero_()
    return m


def copying_eagle(model: LlamaForCausalLM) -> EagleHead:
    """A head that reproduces an `attentionless_model` target: fc passes the token's embedding
    through, the layer and norm are the target's. Its q equals the target's p at every depth."""
    head = EagleHead(EagleConfig.for_target(model, "copy"), model).double().eval()
    H = model.config.hidden_size
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[:, :H] = torch.eye(H)
        head.fc.bias.zero_()
        head.decoder.model.layers[0].load_state_dict(model.model.layers[0].state_dict())
        head.decoder.model.norm.load_state_dict(model.model.norm.state_dict())
    return head
