"""Which columns each layer of a model attends to: full attention, a sliding window, or both.

The engine keeps every layer's keys (decoding/cache.py) and says per query which cache columns it
sees. Full-attention layers see the row's valid columns (holes masked) and, among the new tokens,
their causal past or tree ancestors. A sliding layer of window W sees only those at positions
q - W < k <= q (transformers' `sliding_window_overlay`). A column's position is its rank among
the row's valid columns, so holes shift no window. A window no shorter than the model's context
is full attention. Models with another kind of layer (linear attention, chunked attention, state
spaces) are refused when the engine is built, not at their first request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

FULL, SLIDING = "full_attention", "sliding_attention"


class UnsupportedModel(ValueError):
    """The engine cannot serve this model's attention; the message says why in one line."""


@dataclass(frozen=True)
class AttentionLayout:
    window: int | None  # the sliding layers' window; None: every layer attends fully
    mixed: bool  # sliding and full layers both (transformers then takes a mask per layer kind)

    @classmethod
    def of(cls, config: PretrainedConfig) -> AttentionLayout:
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        kinds = getattr(config, "layer_types", None)
        window = getattr(config, "sliding_window", None)
        if kinds is None:  # Mistral, Phi-3: one window for every layer, or none
            kinds = [SLIDING if window else FULL]
        other = set(kinds) - {FULL, SLIDING}
        if other:
            raise UnsupportedModel(
                f"{config.model_type}: layers of kind {', '.join(sorted(other))} are not supported by "
                "the batched engine (full and sliding-window attention are)"
            )
        context = getattr(config, "max_position_embeddings", None)
        if SLIDING not in kinds or not window or (context and window >= context):
            return cls(None, False)  # a window as long as the context is full attention
        return cls(int(window), FULL in kinds)

    def masks(
        self, allowed: torch.Tensor, q_pos: torch.Tensor, kv_pos: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive masks from `allowed` [B, T, C] (full attention's columns), queries' positions
        q_pos [B, T] and columns' kv_pos [B, C]: one [B, 1, T, C] mask, or one per layer kind."""
        full = _additive(allowed, dtype)
        if self.window is None:
            return full
        near = q_pos[:, :, None] - kv_pos[:, None, :] < self.window  # [B, T, C]
        sliding = _additive(allowed & near, dtype)
        return {FULL: full, SLIDING: sliding} if self.mixed else sliding


def column_positions(mask: torch.Tensor) -> torch.Tensor:
    """[B, L] position of each valid column (its rank among the row's valid columns); holes get
    the position of the valid column before them (they are masked anyway)."""
    return mask.long().cumsum(dim=1) - 1


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(allowed.shape[0], 1, *allowed.shape[1:], dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)  # [B, 1, T, C]
