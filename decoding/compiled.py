"""Compiled decode steps: torch.compile of a model's forward over its cache's whole capacity.

An eager decode step of a small model is bound by per-op overhead (Python, dispatch, dozens of
small kernels per layer), not by reading the weights. Compiled, the ops fuse and the overhead goes.
The compiled forward writes each step's keys and values into fixed columns of the cache buffers
(`decoding/cache.py:GrowingCache.write_at`) and attends over every column, the caller's 4D mask
hiding holes and unused capacity (`decoding/kv.py`), so graphs depend on shapes, not on how full
the cache is.

Shapes are dynamic (rows, tokens per row, cache columns): on CPU inductor then needs at most four
graphs per model and output (dynamo specializes a size of 1: one row or more, one token per row or
more). On CUDA the graphs replay as CUDA graphs ("reduce-overhead"), one per shape met. Prefills
(many tokens per row) stay eager. A model that does not compile runs eagerly from then on, logged.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
MAX_TOKENS = 32  # tokens per row a compiled step takes; more (a prefill, a long catch-up) runs eagerly


class CompileFailed(Exception):
    """The compiled forward raised: the caller runs this step eagerly (and every step after)."""


def use_compile_cache(directory: str | Path | None) -> str:
    """Where inductor keeps compiled graphs across runs (its FX graph cache): `directory`, else
    $TORCHINDUCTOR_CACHE_DIR, else ~/.cache/specserve/inductor. Returns the directory."""
    path = str(
        directory or os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path.home() / ".cache/specserve/inductor"
    )
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


class CompiledForward:
    """One model's compiled forward. Call with ids / position ids [B, T], an additive mask
    [B, 1, T, C] over the cache's C columns, the cache (its `write_at` set) and whether the last
    hidden states are wanted; returns logits [B, T, V] and hidden states [B, T, H] or None."""

    def __init__(self, model: PreTrainedModel, role: str, max_tokens: int = MAX_TOKENS) -> None:
        self.model, self.role, self.max_tokens = model, role, max_tokens
        cuda = next(model.parameters()).device.type == "cuda"
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        self.fn = torch.compile(self._forward, dynamic=True, mode="reduce-overhead" if cuda else None)
        self.enabled = True
        self.graphs: dict[tuple[bool, bool, bool], float] = {}  # (one row, one token, hidden) -> seconds
        self.calls = 0  # compiled forwards run

    def _forward(self, ids, pos, mask, cache, hidden: bool):
        m = self.model
        if hidden:  # Medusa heads read the last hidden states: through the base model and the lm_head
            h = m.base_model(
                input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
            )
            h = h.last_hidden_state
            return m.get_output_embeddings()(h), h
        out = m(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        return out.logits, None

    def usable(self, tokens_per_row: int) -> bool:
        return self.enabled and tokens_per_row <= self.max_tokens

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache, hidden: bool):
        key = (ids.shape[0] == 1, ids.shape[1] == 1, hidden)
        t0 = time.perf_counter()
        try:
            out = self.fn(ids, pos, mask, cache, hidden)
        except Exception as e:  # noqa: BLE001 - any failure to compile: this model runs eagerly
            self.enabled = False
            log.warning(
                "the %s does not compile (%s: %s); running it eagerly", self.role, type(e).__name__, e
            )
            raise CompileFailed from e
        self.calls += 1
        if key not in self.graphs:
            self.graphs[key] = time.perf_counter() - t0
            log.info(
                "compiled the %s's graph for %s, %s%s in %.1f s", self.role,
                "1 row" if key[0] else "rows > 1", "1 token a row" if key[1] else "tokens > 1 a row",
                ", with hidden states" if hidden else "", self.graphs[key],
            )  # fmt: skip
        return out
