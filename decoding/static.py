"""A compiled step's view of a batch's KV cache: fixed columns and a 4D mask (decoding/kv.py calls it).

A step of few tokens a row runs on a compiled graph (decoding/compiled.py) whose shapes must not
follow every new column, or each step would compile one. So the new keys/values are written into
given columns of the cache buffers (`write_at`), and attention runs over a span of columns under a
4D mask built from the hole mask (each new token sees its row's valid columns and, among the new
tokens, what `block` allows: causal, or a tree's ancestors). CUDA graphs replay a recorded shape
at recorded addresses: rows padded to a power of two, the buffers' whole capacity (it doubles),
addresses marked static. Inductor on CPU takes dynamic shapes: the rows as they are, the filled
columns rounded up to SPAN_STEP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from specserve.decoding.attention import column_positions
from specserve.decoding.cache import layers
from specserve.decoding.compiled import CompileFailed

if TYPE_CHECKING:
    from specserve.decoding.kv import KVState

SPAN_STEP = 64  # a compiled step on CPU attends over the filled columns rounded up to this


def static_forward(
    kv: KVState,
    model: PreTrainedModel,
    ids: torch.Tensor,
    pos: torch.Tensor,
    hidden: bool,
    block: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The compiled forward of T new tokens a row (ids, pos [B, T]; or input embeddings
    [B, T, H]) that see the row's valid columns of `kv` and, among themselves, `block` [T, T] (a
    tree's ancestors; None: causal). Returns logits [B, T, V] and hidden states [B, T, H] (or
    None), the columns filled; None when there is none to run (no compiled forward, too many
    tokens, an empty cache, a failure): the caller runs the forward eagerly."""
    B, T = ids.shape[:2]
    mine = layers(kv.cache)
    if kv.compiled is None or not mine or B == 0 or not kv.compiled.wants(B, T, hidden):
        return None
    if block is None:
        block = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
    L, dev = kv.num_columns, kv.mask.device
    fixed = kv.compiled.fixed_shapes
    rows = 1 << (B - 1).bit_length() if fixed else B
    span = -(-(L + T) // SPAN_STEP) * SPAN_STEP
    for layer in mine:  # (dynamic: a column more than the span, so that the span is never the
        # whole buffer: a contiguous view would be a second graph, compiled when they part)
        layer.reserve(rows, L + T if fixed else span + 1)
        if fixed and dev.type == "cuda":  # a captured graph replays on these addresses
            for buffer in layer.buffers():
                torch._dynamo.mark_static_address(buffer)
    C = mine[0].capacity[1] if fixed else span
    allowed = torch.zeros(rows, T, C, dtype=torch.bool, device=dev)  # [rows, T, C]
    allowed[:B, :, :L] = kv.mask[:, None, :]
    allowed[:, :, L : L + T] = block  # (padding rows see their own tokens: no all-masked row)
    if rows > B:  # padding rows repeat the last row's tokens; their keys go to spare buffer rows
        ids = torch.cat([ids, ids[-1:].expand(rows - B, *ids.shape[1:])])
        pos = torch.cat([pos, pos[-1:].expand(rows - B, T)])
    kv_pos = torch.zeros(rows, C, dtype=torch.long, device=dev)  # [rows, C]
    kv_pos[:B, :L] = column_positions(kv.mask)
    kv_pos[:, L : L + T] = pos
    mask4 = kv.layout.masks(allowed, pos, kv_pos, next(model.parameters()).dtype)
    kv.cache.write_at = torch.arange(L, L + T, device=dev)
    kv.cache.span = torch.empty(C, dtype=torch.bool, device=dev)
    try:
        logits, h = kv.compiled(ids, pos, mask4, kv.cache, hidden)
    except CompileFailed:
        return None
    finally:
        kv.cache.write_at = None
    for layer in mine:
        layer.filled(L + T)
    return logits[:B], h[:B] if h is not None else None
