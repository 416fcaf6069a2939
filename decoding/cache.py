"""A transformers cache whose layers append into spare capacity.

transformers' DynamicLayer re-concatenates the whole cache on every update: one full copy of every
layer's keys and values per decode step, which on CPU costs as much as the attention itself. These
layers grow their buffers by doubling, in rows and in columns, so an append writes only the new
columns, a row that leaves moves only the rows behind it, and a row that joins is written into
spare rows; `keys`/`values` are views of the filled part. Assigning `keys`/`values` (as kv.py does
to compact) adopts the new tensor as the buffer.

A compiled step (decoding/compiled.py) writes differently: with `write_at` set on the cache, each
layer copies the new keys/values into the given columns of its buffer and hands attention the
first `span` columns, at most the capacity (the caller's mask hides what is not a row's), so the
graph's shapes follow a size the caller picks, not the filled length; the caller then marks those
columns filled (`filled`).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

MIN_CAPACITY = 64
MIN_ROWS = 2  # rows a buffer holds at least: a compiled graph traced over a one-row buffer
# specializes that size to 1, and a lone row left in a batch's larger buffer then compiled anew


def layers(cache: DynamicCache) -> list:
    """The cache's layers that hold keys/values (a layer is set up by its first update)."""
    return [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]


class GrowingLayer(DynamicLayer):
    """Keys/values in a buffer [rows capacity, H, columns capacity, D]; `keys`/`values` are views of
    the filled part. Appending columns, dropping rows and adding rows copy only what moves."""

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None  # [capacity rows, H, capacity columns, D]
        self._v: torch.Tensor | None = None
        self._b = 0  # filled rows
        self._kn = self._vn = 0  # filled columns of each buffer
        super().__init__()

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[: self._b, :, : self._kn]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._k, self._kn = value, (value.shape[2] if value is not None and value.dim() == 4 else 0)
        self._b = value.shape[0] if value is not None and value.dim() == 4 else 0

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[: self._b, :, : self._vn]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._v, self._vn = value, (value.shape[2] if value is not None and value.dim() == 4 else 0)

    def truncate(self, length: int) -> None:
        """Forget columns from `length` on; the buffer (and its spare capacity) stays."""
        self._kn = min(self._kn, length)
        self._vn = min(self._vn, length)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep `rows` (indices, any order) in place: only rows whose position changes are copied
        (gathered first, so a source may also be a destination)."""
        moved = torch.nonzero(rows != torch.arange(len(rows), device=rows.device)).flatten()
        if len(moved):
            n, src = self._kn, rows[moved]
            self._k[moved, :, :n] = self._k[src, :, :n]
            self._v[moved, :, :n] = self._v[src, :, :n]
        self._b = len(rows)

    def append_rows(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add rows [j, H, Lj, D] after ours; whichever side is shorter gets zero (hole) columns."""
        b, j = self._b, keys.shape[0]
        if b + j > self._k.shape[0]:
            self._reserve(2 * (b + j), self._k.shape[2])
        self._b = b + j
        self.write_rows(slice(b, b + j), keys, values)

    def write_rows(self, rows: torch.Tensor | slice, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Overwrite `rows` with [j, H, Lj, D] from column 0; their later columns become holes, and
        columns beyond ours become holes for every other row (zeros: masked garbage could be NaN)."""
        lj, n = keys.shape[2], self._kn
        if lj > n:
            if lj > self._k.shape[2]:
                self._reserve(self._b, max(MIN_CAPACITY, 2 * lj))
            self._k[: self._b, :, n:lj] = 0  # new hole columns for every row
            self._v[: self._b, :, n:lj] = 0
            self._kn = self._vn = n = lj
        self._k[rows, :, :lj], self._v[rows, :, :lj] = keys, values
        self._k[rows, :, lj:n], self._v[rows, :, lj:n] = 0, 0

    def reserve(self, rows: int, columns: int) -> None:
        """At least this many rows and columns of capacity (doubling, as appends do)."""
        have_rows, have_columns = self._k.shape[0], self._k.shape[2]
        if rows > have_rows or columns > have_columns:
            more_rows = 2 * rows if rows > have_rows else 0
            more_columns = max(MIN_CAPACITY, 2 * columns) if columns > have_columns else 0
            self._reserve(more_rows, more_columns)  # (keeps what is larger already)

    def _reserve(self, rows: int, columns: int) -> None:
        b, n = self._b, self._kn
        rows, columns = max(rows, self._k.shape[0], MIN_ROWS), max(columns, self._k.shape[2])
        # zeros, not garbage: a compiled step attends over the whole capacity, and a masked NaN
        # would still poison the weighted sum (0 x NaN)
        k = self._k.new_zeros(rows, self._k.shape[1], columns, self._k.shape[3])
        v = self._v.new_zeros(rows, self._v.shape[1], columns, self._v.shape[3])
        k[:b, :, :n], v[:b, :, :n] = self._k[:b, :, :n], self._v[:b, :, :n]
        self._k, self._v = k, v

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys, self.values = key_states[:, :, :0], value_states[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, t = self._kn, key_states.shape[2]
        if n + t > self._k.shape[2]:
            self._reserve(self._b, max(MIN_CAPACITY, 2 * (n + t)))
        self._k[: self._b, :, n : n + t] = key_states
        self._v[: self._b, :, n : n + t] = value_states
        self._kn = self._vn = n + t
        return self.keys, self.values

    def write_at(
        self, key_states: torch.Tensor, value_states: torch.Tensor, columns: torch.Tensor, span: torch.Tensor
    ):
        """Static shapes: new [B, H, T, D] into `columns` ([T]) of the first B rows; returns those
        rows' first S columns, S = len(span). Reads no Python state, so a compiled graph keys only
        on tensor shapes."""
        b, h, s = key_states.shape[0], key_states.shape[1], span.shape[0]
        # into the buffer itself, not a view of its first b rows: compiled with b symbolic, an
        # in-place write to a view became a copy of all b rows' columns out and back each layer
        at = (  # [b, 1, 1], [1, H, 1], [1, 1, T] -> [b, H, T]
            torch.arange(b, device=columns.device)[:, None, None],
            torch.arange(h, device=columns.device)[None, :, None],
            columns[None, None, :],
        )
        self._k.index_put_(at, key_states)
        self._v.index_put_(at, value_states)
        return self._k[:b, :, :s], self._v[:b, :, :s]

    def filled(self, columns: int) -> None:
        """After a compiled step: the first `columns` columns hold data."""
        self._kn = self._vn = columns

    def buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole key and value buffers (for CUDA graphs, whose inputs keep their addresses)."""
        return self._k, self._v

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, columns) the buffer holds."""
        return self._k.shape[0], self._k.shape[2]


class GrowingCache(DynamicCache):
    """DynamicCache with GrowingLayer layers. Sliding-window layers keep every column too: the
    masks (decoding/attention.py) hide what lies outside a window; other kinds are refused."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config=config)
        kinds = {type(layer).__name__ for layer in self.layers}
        if kinds - {"DynamicLayer", "DynamicSlidingWindowLayer"}:
            raise ValueError(
                f"{config.model_type} uses cache layers {sorted(kinds)}; the batched cache supports "
                "full-attention and sliding-window layers"
            )
        self.layers = [GrowingLayer() for _ in self.layers] if self.layers else []
        if not self.layers:  # layers created lazily, one per update of a new layer index
            self.layer_class_to_replicate = GrowingLayer
        self.write_at: torch.Tensor | None = None  # [T] columns a compiled step writes (None: append)
        self.span: torch.Tensor | None = None  # [S] its length: the columns attention reads

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.write_at is not None:
            return self.layers[layer_idx].write_at(key_states, value_states, self.write_at, self.span)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)
