"""A transformers cache whose layers append into spare capacity.

transformers' DynamicLayer re-concatenates the whole cache on every update: one full copy of every
layer's keys and values per decode step, which on CPU costs as much as the attention itself. These
layers grow their buffers by doubling, so an append writes only the new columns; `keys`/`values`
are views of the filled part. Assigning `keys`/`values` (as kv.py does to select, join or compact
rows) adopts the new tensor as the buffer.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

MIN_CAPACITY = 64


class GrowingLayer(DynamicLayer):
    def __init__(self) -> None:
        self._k: torch.Tensor | None = None  # [B, H, capacity, D]
        self._v: torch.Tensor | None = None
        self._kn = self._vn = 0  # filled columns of each buffer
        super().__init__()

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:, :, : self._kn]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._k, self._kn = value, (value.shape[2] if value is not None and value.dim() == 4 else 0)

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, : self._vn]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._v, self._vn = value, (value.shape[2] if value is not None and value.dim() == 4 else 0)

    def truncate(self, length: int) -> None:
        """Forget columns from `length` on; the buffer (and its spare capacity) stays."""
        self._kn = min(self._kn, length)
        self._vn = min(self._vn, length)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys, self.values = key_states[:, :, :0], value_states[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, t = self._kn, key_states.shape[2]
        if n + t > self._k.shape[2]:
            cap = max(MIN_CAPACITY, 2 * (n + t))
            k = key_states.new_empty(key_states.shape[0], key_states.shape[1], cap, key_states.shape[3])
            v = value_states.new_empty(
                value_states.shape[0], value_states.shape[1], cap, value_states.shape[3]
            )
            k[:, :, :n], v[:, :, :n] = self._k[:, :, :n], self._v[:, :, :n]
            self._k, self._v = k, v
        self._k[:, :, n : n + t] = key_states
        self._v[:, :, n : n + t] = value_states
        self._kn = self._vn = n + t
        return self.keys, self.values


class GrowingCache(DynamicCache):
    """DynamicCache with GrowingLayer layers; refuses models whose layers are not full attention."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config=config)
        kinds = {type(layer).__name__ for layer in self.layers}
        if kinds - {"DynamicLayer"}:
            raise ValueError(
                f"{config.model_type} uses cache layers {sorted(kinds)}; the batched cache supports "
                "full-attention layers only (sliding-window and hybrid models are not supported yet)"
            )
        self.layers = [GrowingLayer() for _ in self.layers] if self.layers else []
        if not self.layers:  # layers created lazily, one per update of a new layer index
            self.layer_class_to_replicate = GrowingLayer
