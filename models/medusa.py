"""Medusa heads (Cai et al. 2024): K extra heads on the target's last hidden state.

Head k (0-based) guesses the token k + 2 positions after the hidden state's own position (the
target's lm_head already predicts the next one). Each head is a residual block, h + SiLU(W h),
followed by a projection to the vocabulary: its own, or the target's lm_head (shared, frozen).
Heads are built as distinct modules, saved as safetensors plus a JSON config naming their target.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "medusa_heads.safetensors"


@dataclass
class MedusaConfig:
    num_heads: int
    hidden_size: int
    vocab_size: int
    num_layers: int = 1  # residual blocks per head
    share_lm_head: bool = False  # project with the target's lm_head instead of an own matrix
    target: str = ""  # the target the heads were trained for (name or path)
    tree: list[list[int]] | None = None  # medusa_choices fitted by `specserve bench tree`, if any


class ResBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)  # starts as identity: each head begins as the lm_head itself
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class MedusaHeads(nn.Module):
    def __init__(self, config: MedusaConfig, lm_head: nn.Linear | None = None) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResBlock(config.hidden_size) for _ in range(config.num_layers)])
            for _ in range(config.num_heads)
        )
        if config.share_lm_head:
            if lm_head is None:
                raise ValueError("share_lm_head=True needs the target's lm_head")
            self.shared = lm_head
            self.proj = None
        else:
            self.shared = None
            self.proj = nn.ModuleList(
                nn.Linear(config.hidden_size, config.vocab_size, bias=False) for _ in range(config.num_heads)
            )
            if lm_head is not None:  # start every head from the target's own projection
                for p in self.proj:
                    p.weight.data.copy_(lm_head.weight.data)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., K, V]."""
        outs = []
        for k, block in enumerate(self.blocks):
            h = block(hidden)
            outs.append(self.shared(h) if self.shared is not None else self.proj[k](h))
        return torch.stack(outs, dim=-2)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("shared.")}
        save_file(state, str(path / WEIGHTS_NAME))
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, path: str | Path, target: nn.Module, dtype: torch.dtype | None = None) -> MedusaHeads:
        """Load heads for `target` (a causal LM); refuse heads made for another shape."""
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise ValueError(f"no Medusa heads at {str(path)!r} (missing {CONFIG_NAME})")
        config = MedusaConfig(**json.loads((path / CONFIG_NAME).read_text()))
        lm_head = target.get_output_embeddings()
        t_hidden, t_vocab = target.config.hidden_size, lm_head.weight.shape[0]
        if (config.hidden_size, config.vocab_size) != (t_hidden, t_vocab):
            raise ValueError(
                f"Medusa heads at {str(path)!r} were made for hidden size {config.hidden_size} and "
                f"vocabulary {config.vocab_size}; the target has {t_hidden} and {t_vocab}"
            )
        state = load_file(str(path / WEIGHTS_NAME))
        heads = cls(config, lm_head if config.share_lm_head else None)
        stored = next(iter(state.values())).dtype
        for module in heads.blocks:  # load at the stored precision before casting to the target's
            module.to(stored)
        if heads.proj is not None:
            heads.proj.to(stored)
        heads.load_state_dict(state, strict=not config.share_lm_head)
        param = next(target.parameters())
        return heads.to(device=param.device, dtype=dtype or param.dtype).eval().requires_grad_(False)
