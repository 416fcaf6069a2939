"""`ngram`: prompt lookup decoding (Saxena 2023). No model: continue an earlier match of the suffix.

For n from ngram_max down to ngram_min, find the most recent earlier occurrence of the row's last n
tokens and propose up to k tokens that followed it. Candidates are deterministic, so under sampling
they are verified by `verify_match` (exact).
"""

from __future__ import annotations

import numpy as np
import torch

from specserve.decoding.proposer import NoProposer, Proposal
from specserve.decoding.row import Row
from specserve.decoding.sampling import Warp


def lookup(tokens: list[int], k: int, n_max: int, n_min: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the longest matching suffix."""
    if k <= 0 or len(tokens) < 2:
        return []
    seq = np.asarray(tokens, dtype=np.int64)
    for n in range(min(n_max, len(seq) - 1), n_min - 1, -1):
        suffix = seq[-n:]
        windows = np.lib.stride_tricks.sliding_window_view(seq[:-1], n)  # [L - n, n], ends before the suffix
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            return seq[start : start + k].tolist()
    return []


class NgramProposer(NoProposer):
    """Stateless: it reads only each row's tokens, so admit/commit/select have nothing to do."""

    def propose(self, rows: list[Row], ks: list[int], warp: Warp, u: torch.Tensor | None) -> Proposal:
        return Proposal(
            [lookup(r.tokens, k, r.spec.ngram_max, r.spec.ngram_min) for r, k in zip(rows, ks, strict=True)]
        )
