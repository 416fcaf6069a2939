"""EAGLE draft head (Li et al. 2024, EAGLE-1): one decoder layer that drafts at the feature level.

The target's last hidden state ("feature") at position t, fused with the embedding of the token at
t + 1 through one linear layer (`fc`), goes through one Llama decoder layer (with its own cache over
the row's earlier entries) and a norm; the result is the head's guess of the target's feature at
t + 1, and the target's own lm_head turns it into the distribution q of the token at t + 2. Drafting
feeds the guessed feature back with the sampled token, K times.

The head shares the target's token embedding and lm_head (frozen, not stored). Stored: safetensors
of `fc`, the layer and the norm, plus a JSON config naming the target and a digest of its lm_head,
so a head is refused for any other target.

A head may draft over part of the vocabulary (EAGLE-3's reduced draft vocabulary, `restrict`,
models/draft_vocab.py): its lm_head keeps the rows of the tokens it may propose (stored with the
head as `vocab`), and q is 0 for the rest.

The head may run at another precision than the target (`load(dtype=...)`, `--eagle-dtype`): it then
projects with its own copy of the target's embedding and lm_head in that precision. Lossless at any
precision, since q is whatever the head computes; only acceptance can change. On a CPU whose L3
cannot hold target and head, a bfloat16 head reads half the bytes per forward (the lm_head is most
of them): docs/batch-tradeoffs.md has the measurements.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from specserve.models.draft_vocab import rows_of

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "eagle_head.safetensors"
SHARED = ("decoder.model.embed_tokens.", "decoder.lm_head.")  # the target's: never stored
VOCAB = "vocab"  # the draft vocabulary's token ids in the weights file (absent: the whole vocabulary)


@dataclass
class EagleConfig:
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    target: str = ""  # the target it was trained for (name or path), for people
    target_digest: str = ""  # `target_digest` of that target's lm_head: what loading checks

    @classmethod
    def for_target(cls, target: PreTrainedModel, name: str = "") -> EagleConfig:
        """A head of the target's width, heads and MLP size (one layer)."""
        c = target.config
        heads = c.num_attention_heads
        return cls(
            hidden_size=c.hidden_size,
            vocab_size=target.get_output_embeddings().weight.shape[0],
            num_attention_heads=heads,
            num_key_value_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
            intermediate_size=getattr(c, "intermediate_size", None) or 4 * c.hidden_size,
            max_position_embeddings=c.max_position_embeddings,
            target=name,
            target_digest=target_digest(target),
        )


def target_digest(target: PreTrainedModel) -> str:
    """A fingerprint of a target's lm_head (its first 64 rows as bf16: the same for the float32,
    bfloat16 and float16 loads of bf16-stored weights)."""
    w = target.get_output_embeddings().weight[:64].detach().to("cpu", torch.bfloat16).contiguous()
    return hashlib.sha256(w.view(torch.int16).numpy().tobytes()).hexdigest()[:16]


class EagleHead(nn.Module):
    """fc(cat(embed(token), feature)) -> one Llama decoder layer -> norm: the next feature."""

    def __init__(self, config: EagleConfig, target: PreTrainedModel) -> None:
        super().__init__()
        self.config = config
        H = config.hidden_size
        self.fc = nn.Linear(2 * H, H)
        layer_config = LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=H, intermediate_size=config.intermediate_size,
            num_hidden_layers=1, num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
            max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
            tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None,
        )  # fmt: skip
        # a causal LM of one layer, so the engine's cache machinery runs it like any draft model;
        # its embedding and projection are the target's own modules
        self.decoder = LlamaForCausalLM(layer_config)
        self.decoder.model.embed_tokens = target.get_input_embeddings()
        self.decoder.lm_head = target.get_output_embeddings()
        self.vocab: torch.Tensor | None = None  # [V'] token ids the head drafts (None: all V)

    @property
    def dtype(self) -> torch.dtype:
        """The head's precision (its own modules')."""
        return self.fc.weight.dtype

    def embed(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] (the token after each feature's position), features [B, T, H] -> [B, T, H]."""
        e = self.decoder.model.embed_tokens(tokens).to(features.dtype)
        return self.fc(torch.cat([e, features], dim=-1))

    def forward(
        self, tokens: torch.Tensor, features: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Without a cache (training): the next features [B, T, H] and their logits [B, T, V]."""
        h = self.decoder.model(inputs_embeds=self.embed(tokens, features), position_ids=position_ids)
        h = h.last_hidden_state
        return h, self.decoder.lm_head(h)

    def restrict(self, ids: torch.Tensor) -> None:
        """Draft over the tokens `ids` only: the lm_head keeps their rows (a copy) and the head's
        logits index into `vocab`, the sorted ids."""
        self.decoder.lm_head, self.vocab = rows_of(self.decoder.lm_head, ids, self.config.vocab_size)

    def token_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Indices into the head's logits -> the target's token ids."""
        return index if self.vocab is None else self.vocab[index]

    def own_modules(self) -> list[nn.Module]:
        """fc, the layer, the norm and the rotary embedding: everything but the target's modules."""
        m = self.decoder.model
        return [self.fc, m.layers, m.norm, m.rotary_emb]

    def own_parameters(self) -> list[nn.Parameter]:
        """What training updates and the file holds (not the shared embedding or lm_head)."""
        return [p for n, p in self.named_parameters() if not n.startswith(SHARED)]

    def own_state(self) -> dict[str, torch.Tensor]:
        """The state dict without the target's modules: what files and checkpoints hold."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(SHARED)}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.own_state() | ({VOCAB: self.vocab.cpu()} if self.vocab is not None else {})
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / WEIGHTS_NAME))
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, path: str | Path, target: PreTrainedModel, dtype: torch.dtype | None = None) -> EagleHead:
        """Load a head for `target`, at `dtype` (default: the target's); refuse one trained for
        another target."""
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise ValueError(f"no EAGLE head at {str(path)!r} (missing {CONFIG_NAME})")
        config = EagleConfig(**json.loads((path / CONFIG_NAME).read_text()))
        mine = target_digest(target)
        if config.target_digest != mine:
            raise ValueError(
                f"the EAGLE head at {str(path)!r} was trained for another target ({config.target or '?'}, "
                f"lm_head digest {config.target_digest}); this target's is {mine}: train one for it with "
                "`specserve train eagle --target ...`"
            )
        head = cls(config, target)
        state = load_file(str(path / WEIGHTS_NAME))
        vocab = state.pop(VOCAB, None)
        for module in head.own_modules():  # at the stored precision, then the target's
            module.to(next(iter(state.values())).dtype)
        missing, unexpected = head.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(SHARED)]
        if missing or unexpected:
            raise ValueError(
                f"the EAGLE head at {str(path)!r} does not fit: missing {missing}, extra {unexpected}"
            )
        param = next(target.parameters())
        dtype = dtype or param.dtype
        for module in head.own_modules():  # (the shared ones are the target's: left as they are)
            module.to(device=param.device, dtype=dtype)
        if dtype != param.dtype:  # copies of the target's modules at the head's precision
            head.decoder.model.embed_tokens = _copy(target.get_input_embeddings(), dtype)
            head.decoder.lm_head = _copy(target.get_output_embeddings(), dtype)
        if vocab is not None:
            head.restrict(vocab)
        return head.eval().requires_grad_(False)


def _copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen copy of one of the target's modules at `dtype` (the target's stays as it is)."""
    out = copy.deepcopy(module).to(dtype)
    return out.requires_grad_(False)
