"""Batched KV cache bookkeeping over an unmodified transformers model.

All rows share the cache's columns. A row's tokens sit in its *valid* columns, in order; columns it
rejected (or never used: padding) stay behind as *holes*, masked out by a 2D attention mask, and each
row carries its own position ids, so holes cost memory and attention FLOPs but never change a logit.
Rollback is therefore one line (clear mask bits, in `rollback`); `compact` gathers each row's valid
columns to the front when holes pile up. Rows leave by selection and join by appending (in place,
where the cache has spare rows).

Invariant after every commit: `seen[b] == mask[b].sum()` == tokens of row b the model has consumed.

With a compiled forward (decoding/compiled.py), a step of few tokens a row writes into fixed
columns of the cache buffers and attends over a span of them under a 4D mask built from the same
hole mask (decoding/static.py); prefills and long catch-ups stay eager.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel

from specserve.decoding.attention import AttentionLayout, column_positions
from specserve.decoding.cache import GrowingCache, GrowingLayer, layers
from specserve.decoding.compiled import CompiledForward
from specserve.decoding.static import static_forward
from specserve.decoding.stats import Forward
from specserve.decoding.tree import Tree

COMPACT_MIN_HOLES = 32  # gather only when it frees at least this many columns ...
COMPACT_FRACTION = 0.25  # ... and they are at least this share of the cache


@dataclass
class KVState:
    """One model's cache for a batch of rows. mask: [B, L] bool; seen: [B] long."""

    cache: DynamicCache
    mask: torch.Tensor
    seen: torch.Tensor
    dense: bool = True  # every column valid for every row: attention needs no mask
    role: str = "target"  # which model's cache ("target" or "draft"), for the forward records
    forwards: list[Forward] = field(default_factory=list)  # since the last drain
    compiled: CompiledForward | None = None  # the model's compiled forward, for decode steps
    layout: AttentionLayout = AttentionLayout(None, False)  # full attention, or sliding windows too

    def drain(self) -> list[Forward]:
        out, self.forwards = self.forwards, []
        return out

    @classmethod
    def empty(
        cls,
        model: PreTrainedModel,
        batch_size: int,
        role: str = "target",
        compiled: CompiledForward | None = None,
    ) -> KVState:
        dev = model.device
        return cls(
            GrowingCache(model.config),
            torch.zeros(batch_size, 0, dtype=torch.bool, device=dev),
            torch.zeros(batch_size, dtype=torch.long, device=dev),
            role=role,
            compiled=compiled,
            layout=AttentionLayout.of(model.config),
        )

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def num_columns(self) -> int:
        return self.mask.shape[1]

    def forward(
        self,
        model: PreTrainedModel,
        seqs: list[list[int]] | torch.Tensor,
        logits: str = "all",
        hidden: bool | str = False,
        embeds: torch.Tensor | None = None,
    ):
        """Feed each row its own tokens (right-padded with holes) and return logits.

        seqs: per-row token lists, or a [B, T] tensor when every row feeds T tokens (no padding).
        logits="all" -> [B, T, V] where row b's outputs are at 0..len(seqs[b])-1;
        logits="last" -> [B, V], the output at each row's last real token.
        hidden=True also returns the last hidden states at the same positions ([B, T, H] / [B, H]);
        hidden="all" returns them at every position [B, T, H], whatever `logits` selects.
        embeds [B, T, H]: the input embeddings to feed instead of the tokens' (an EAGLE head's;
        `seqs` then only says how many each row feeds).
        """
        dev = self.mask.device
        if isinstance(seqs, torch.Tensor):
            ids, B, T = seqs, seqs.shape[0], seqs.shape[1]
            lens = None
        else:
            B, n = len(seqs), [len(s) for s in seqs]
            T = max(n)
            ids = torch.tensor([s + [0] * (T - len(s)) for s in seqs], device=dev)  # [B, T]
            lens = None if min(n) == T else torch.tensor(n, device=dev)  # [B], only when padded
        offs = torch.arange(T, device=dev)[None, :]  # [1, T]
        if lens is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=dev)
            pos = self.seen[:, None] + offs  # [B, T]
        else:
            valid = offs < lens[:, None]  # [B, T]
            # padding repeats the last real position (models with learned positions stay in range)
            last = (lens - 1).clamp(min=0)  # [B] (a row fed nothing: its output is unused)
            pos = self.seen[:, None] + torch.minimum(offs, last[:, None])
        attn = torch.cat([self.mask, valid], dim=1)  # [B, L + T]
        self.dense = self.dense and lens is None  # no holes, no padding: SDPA's causal fast path
        t0 = time.perf_counter()
        static = static_forward(self, model, ids if embeds is None else embeds, pos, bool(hidden))
        if static is not None:
            out, h = static  # every position: [B, T, V], [B, T, H]
            keep = torch.arange(T, device=dev)
        else:
            keep: int | torch.Tensor = 1 if logits == "last" and lens is None else 0
            if logits == "last" and lens is not None:
                keep = torch.unique(last)  # only the positions some row needs
            mask = None if self.dense else attn.long()
            if self.layout.window is not None:  # sliding layers: the masks say which columns, per query
                block = valid[:, None, :] & torch.ones(T, T, dtype=torch.bool, device=dev).tril()  # [B, T, T]
                allowed = torch.cat([self.mask[:, None, :].expand(B, T, -1), block], dim=2)  # [B, T, L + T]
                kv_pos = torch.cat([column_positions(self.mask), pos], dim=1)  # [B, L + T]
                mask = self.layout.masks(allowed, pos, kv_pos, next(model.parameters()).dtype)
            out, h = _run(model, ids, mask, pos, self.cache, keep, hidden, embeds)
        if self.compiled is not None:
            self.compiled.timed(B, T, bool(hidden), static is not None, time.perf_counter() - t0)
        self.forwards.append(Forward(self.role, [T] * B if lens is None else n, self.num_columns))
        self.mask = attn
        self.seen = self.seen + (T if lens is None else lens)
        if logits == "all":
            return (out, h) if hidden else out
        if lens is None:
            sel = (out[:, -1], h[:, -1] if hidden else None)  # [B, V], [B, H]
        else:
            where = torch.searchsorted(keep, last)  # [B] index into the kept positions
            rows = torch.arange(B, device=dev)
            sel = (out[rows, where], h[rows, where] if hidden else None)
        if hidden == "all":
            return sel[0], h
        return sel if hidden else sel[0]

    def forward_tree(
        self, model: PreTrainedModel, ids: torch.Tensor, tree: Tree
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed every row a token tree (ids [B, N], node 0 = the pending token) in one forward.

        Each node sees its row's valid cache columns and its own ancestors (a 4D mask) at position
        seen + depth. Returns logits [B, N, V] and last hidden states [B, N, H]; `rollback` then
        keeps the accepted path.
        """
        B, N = ids.shape
        L = self.num_columns
        pos = self.seen[:, None] + tree.depth[None, :]  # [B, N]
        t0 = time.perf_counter()
        static = static_forward(self, model, ids, pos, True, tree.ancestors)
        if static is not None:
            logits, h = static
        else:
            allowed = torch.cat(
                [self.mask[:, None, :].expand(B, N, L), tree.ancestors[None].expand(B, N, N)], dim=2
            )  # [B, N, L + N]
            kv_pos = torch.cat([column_positions(self.mask), pos], dim=1)  # [B, L + N]
            mask = self.layout.masks(allowed, pos, kv_pos, next(model.parameters()).dtype)
            logits, h = _run(model, ids, mask, pos, self.cache, 0, True)
        if self.compiled is not None:
            self.compiled.timed(B, N, True, static is not None, time.perf_counter() - t0)
        self.forwards.append(Forward(self.role, [N] * B, L))
        self.mask = torch.cat([self.mask, torch.ones(B, N, dtype=torch.bool, device=ids.device)], dim=1)
        self.seen = self.seen + N
        self.dense = False
        return logits, h

    def rollback(self, keep: torch.Tensor) -> None:
        """Drop rejected tokens among the last N columns: keep [B, N] bool (False -> hole)."""
        if bool(keep.all()):  # everything accepted: nothing to undo
            return
        N = keep.shape[1]
        self.mask[:, self.num_columns - N :] &= keep
        self.seen = self.mask.sum(dim=1)
        self._trim()

    def _trim(self) -> None:
        """Crop trailing columns no row uses (free: a slice), then gather if holes dominate."""
        used = self.mask.any(dim=0).nonzero()
        last = int(used[-1]) + 1 if len(used) else 0
        if last < self.num_columns:
            for layer in layers(self.cache):
                layer.truncate(last)  # keeps the spare capacity for the next append
            self.mask = self.mask[:, :last]
        if self.batch_size == 0:
            return
        holes = self.num_columns - int(self.seen.max())
        if holes >= COMPACT_MIN_HOLES and holes >= COMPACT_FRACTION * self.num_columns:
            self.compact()
        self.dense = bool(self.mask.all())

    def compact(self) -> None:
        """Move each row's valid columns to the front, in order: L -> max(seen)."""
        L2 = int(self.seen.max()) if self.batch_size else 0
        # stable sort puts valid columns first, keeping their order
        order = torch.sort((~self.mask).to(torch.int8), dim=1, stable=True).indices[:, :L2]  # [B, L2]
        for layer in layers(self.cache):
            idx = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, idx)
            layer.values = layer.values.gather(2, idx)
        self.mask = torch.arange(L2, device=self.mask.device)[None, :] < self.seen[:, None]
        self.dense = bool(self.mask.all())

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (a [B'] index tensor), in that order."""
        for layer in layers(self.cache):
            if isinstance(layer, GrowingLayer):
                layer.keep_rows(rows)  # in place: no new buffer, the spare capacity stays
            else:
                layer.keys = layer.keys[rows]
                layer.values = layer.values[rows]
        self.mask = self.mask[rows]
        self.seen = self.seen[rows]
        self._trim()

    def extend(self, other: KVState) -> None:
        """Append other's rows after ours; the shorter side is padded with hole columns on the right."""
        self.forwards += other.drain()
        if self.batch_size == 0:
            self.cache, self.mask, self.seen, self.dense = other.cache, other.mask, other.seen, other.dense
            return
        if not layers(other.cache):  # rows that have consumed nothing yet (a lazy draft's)
            self.add_rows(other.batch_size)
            return
        L = max(self.num_columns, other.num_columns)
        for mine, theirs in zip(layers(self.cache), layers(other.cache), strict=True):
            if isinstance(mine, GrowingLayer):
                mine.append_rows(theirs.keys, theirs.values)  # into spare rows: only theirs copied
                continue
            mine.keys = torch.cat([_pad_cols(mine.keys, L), _pad_cols(theirs.keys, L)], dim=0)
            mine.values = torch.cat([_pad_cols(mine.values, L), _pad_cols(theirs.values, L)], dim=0)
        self.mask = torch.cat([_pad_cols(self.mask, L, dim=1), _pad_cols(other.mask, L, dim=1)], dim=0)
        self.seen = torch.cat([self.seen, other.seen])
        self.dense = bool(self.mask.all())

    def add_rows(self, n: int) -> None:
        """Append n rows that have consumed nothing: every column is a hole for them."""
        for layer in layers(self.cache):
            empty = layer.keys.new_zeros(n, layer.keys.shape[1], 0, layer.keys.shape[3])
            layer.append_rows(empty, empty)
        self.mask = torch.cat([self.mask, self.mask.new_zeros(n, self.num_columns)])
        self.seen = torch.cat([self.seen, self.seen.new_zeros(n)])
        self.dense = self.dense and not (n and self.num_columns)

    def splice(self, rows: torch.Tensor, other: KVState) -> None:
        """Put other's rows (e.g. a fresh prefill) in place of `rows`, rows that have consumed
        nothing: their columns start at 0, and our later columns are holes for them."""
        at = rows.tolist()
        for f in other.drain():  # recorded over all our rows: the others fed nothing
            tokens = [0] * self.batch_size
            for r, t in zip(at, f.tokens, strict=True):
                tokens[r] = t
            self.forwards.append(Forward(f.model, tokens, f.columns))
        lj = other.num_columns
        if layers(self.cache):
            for mine, theirs in zip(layers(self.cache), layers(other.cache), strict=True):
                mine.write_rows(rows, theirs.keys, theirs.values)
        else:  # no row had consumed anything: adopt their layers, widened
            self.cache = other.cache
            for layer in layers(self.cache):
                k = layer.keys.new_zeros(self.batch_size, *layer.keys.shape[1:])
                v = layer.values.new_zeros(self.batch_size, *layer.values.shape[1:])
                k[rows], v[rows] = layer.keys, layer.values
                layer.keys, layer.values = k, v
        L = max(self.num_columns, lj)
        self.mask = _pad_cols(self.mask, L, dim=1)
        self.mask[rows] = _pad_cols(other.mask, L, dim=1)
        self.seen = self.seen.clone()
        self.seen[rows] = other.seen
        self.dense = bool(self.mask.all())

    def nbytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in layers(self.cache))


def _run(model, ids, mask, pos, cache, keep, hidden: bool | str, embeds: torch.Tensor | None = None):
    """One forward; with `hidden`, through the base model and the lm_head so the final hidden
    states come back too (what Medusa and EAGLE heads read: at the kept positions, or at all
    with hidden="all"). `embeds` replace the tokens' input embeddings."""
    inputs = {"input_ids": ids} if embeds is None else {"inputs_embeds": embeds}
    if not hidden:
        out = model(**inputs, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                    logits_to_keep=keep)  # fmt: skip
        return out.logits, None
    h = model.base_model(**inputs, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    h = h_all = h.last_hidden_state
    if isinstance(keep, torch.Tensor):
        h = h[:, keep]
    elif keep:
        h = h[:, -keep:]
    return model.get_output_embeddings()(h), h_all if hidden == "all" else h


def _pad_cols(x: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_zeros(shape)], dim=dim)
