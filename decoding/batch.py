"""A sub-batch: the rows of one method stepping together over the target's shared cache."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel

from specserve.decoding.compiled import CompiledForward
from specserve.decoding.draft import DraftProposer
from specserve.decoding.eagle import EagleProposer
from specserve.decoding.kv import KVState
from specserve.decoding.medusa import MedusaProposer
from specserve.decoding.ngram import NgramProposer
from specserve.decoding.prefix_cache import PrefixCache
from specserve.decoding.proposer import NoProposer, Proposer
from specserve.decoding.row import Row
from specserve.decoding.sampling import Warp
from specserve.decoding.stats import Forward


def make_proposer(
    method: str,
    draft: PreTrainedModel | None,
    medusa: tuple | None = None,
    prefix: PrefixCache | None = None,
    compiled: CompiledForward | None = None,
    eagle: nn.Module | None = None,
) -> Proposer:
    """medusa: (heads, tree) when Medusa heads are loaded; prefix: the draft's prefix cache;
    compiled: the compiled forward of the draft (or of the EAGLE head); eagle: an EAGLE head."""
    if method == "medusa":
        if medusa is None:
            raise ValueError("method 'medusa' needs Medusa heads (--medusa)")
        return MedusaProposer(*medusa)
    if method == "draft":
        if draft is None:
            raise ValueError("method 'draft' needs a draft model (--draft)")
        return DraftProposer(draft, prefix, compiled)
    if method == "eagle":
        if eagle is None:
            raise ValueError("method 'eagle' needs an EAGLE head (--eagle)")
        return EagleProposer(eagle, compiled)
    if method == "ngram":
        return NgramProposer()
    if method == "none":
        return NoProposer()
    raise ValueError(f"unknown method {method!r}")


@dataclass
class SubBatch:
    method: str
    kv: KVState  # the target's cache for these rows
    proposer: Proposer
    rows: list[Row] = field(default_factory=list)
    _warp: Warp | None = None  # the rows' sampling filters as tensors, rebuilt when membership changes

    @property
    def warp(self) -> Warp:
        if self._warp is None:
            self._warp = Warp.from_params([r.sampling for r in self.rows], self.kv.mask.device)
        return self._warp

    @property
    def fixed_k(self) -> int:
        """The most speculative tokens a row asked for (0 for plain decoding)."""
        return 0 if self.method == "none" else max(r.spec.num_speculative_tokens for r in self.rows)

    def caches(self) -> list[KVState]:
        """The proposer's own cache, if it has one, and the target's (the order a step runs them)."""
        return ([self.proposer.kv] if self.proposer.kv is not None else []) + [self.kv]

    def drain_forwards(self) -> list[Forward]:
        """Every cached model forward since the last drain (for bytes and FLOPs accounting)."""
        return [f for kv in self.caches() for f in kv.drain()]

    def nbytes(self) -> int:
        """Bytes of KV cache the sub-batch holds (holes included)."""
        return sum(kv.nbytes() for kv in self.caches())

    def join(self, rows: list[Row]) -> None:
        self.rows.extend(rows)
        self._warp = None

    def merge(self, other: SubBatch) -> None:
        """Take over other's rows (prefilled apart) after ours."""
        self.kv.extend(other.kv)
        self.proposer.extend(other.proposer)
        self.join(other.rows)

    def retire(self) -> list[Row]:
        """Remove finished rows (and their cache rows); return them."""
        done = [r for r in self.rows if r.finish_reason]
        if done:
            keep = _fill_from_end([not r.finish_reason for r in self.rows])
            idx = torch.tensor(keep, dtype=torch.long, device=self.kv.mask.device)
            self.kv.select(idx)
            self.proposer.select(idx)
            self.rows = [self.rows[i] for i in keep]
            self._warp = None
        return done


def _fill_from_end(alive: list[bool]) -> list[int]:
    """Indices of the live rows, each gap filled by a live row from the end: the cache then moves
    one row per row that left, not every row behind it (row order within a batch is free)."""
    keep = [i for i, a in enumerate(alive) if a]
    n = len(keep)
    tail = [i for i in keep if i >= n]  # live rows beyond the new end, to move into the gaps
    return [i if i < n and alive[i] else tail.pop() for i in range(n)]
