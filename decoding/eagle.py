"""`eagle`: an EAGLE head (models/eagle.py) drafts K tokens at the feature level from its own cache.

The head's cache holds one entry per position t the target has verified: (the target's feature at
t, the token at t + 1). The target's features arrive with every step (`commit`: those along each
row's accepted path) and at admission (every prompt position the target fed); they wait in
`pending` until the row is next drafted for. `propose` then feeds a row's pending entries (the
catch-up; its last output is the first candidate), and for each further candidate an entry of the
head's own guessed feature and that candidate. `commit` drops those guessed entries again: their
true features come from the target's verify and are fed at the next catch-up.

Rows at K = 0 are not fed (holes), so a plain step costs what a `none` step costs plus writing the
target's features into a buffer in place. A row left plain for long is caught up on its last
MAX_PENDING features only (older context is dropped from the head's view: a lower acceptance, never
a different output). Sampling: q is the head's distribution (0 outside a reduced draft
vocabulary), verified by rejection sampling (seeded rows: by matching) like `draft`.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from specserve.decoding.compiled import CompiledForward
from specserve.decoding.kv import KVState
from specserve.decoding.proposer import Proposal
from specserve.decoding.row import Row
from specserve.decoding.sampling import Warp, draw_tokens, widen

MAX_PENDING = 256  # target features a catch-up feeds the head a row at most (the buffer keeps up to 2x)


def append_pending(
    feats: torch.Tensor, n: torch.Tensor, new: torch.Tensor, k: torch.Tensor, cap: int = MAX_PENDING
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row b's first k[b] of new [B, P, H] written after its first n[b] of feats [B, W, H], in place
    (a plain step costs its own features, not a copy of every row's pending ones). When a row
    would pass the buffer's end, every row first keeps only its last `cap` in a buffer of 2 * cap
    + P columns: a gather once per cap steps at most. Returns (feats, counts [B])."""
    B, P = new.shape[:2]
    if B and int((n + P).max()) > feats.shape[1]:
        kept = n.clamp(max=cap)
        old = last_pending(feats, n, kept)  # [B, <= cap, H]
        feats = torch.nn.functional.pad(old, (0, 0, 0, 2 * cap + P - old.shape[1]))
        n = kept
    b, j = (torch.arange(P, device=n.device)[None, :] < k[:, None]).nonzero(as_tuple=True)
    feats[b, n[b] + j] = new[b, j].to(feats.dtype)
    return feats, n + k


def last_pending(feats: torch.Tensor, n: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Row b's last m[b] of its first n[b] in feats [B, W, H], left-aligned: [B, max(m), H]."""
    T = int(m.max()) if len(m) else 0
    src = (n - m)[:, None] + torch.arange(T, device=n.device)[None, :]  # [B, T]
    src = src.clamp(min=0, max=max(feats.shape[1] - 1, 0))  # (past a row's m: unused)
    return feats.gather(1, src[..., None].expand(-1, -1, feats.shape[2]))


def _pad(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """Ragged [n_b, H] -> [B, width, H], zero-padded on the right."""
    return torch.stack([torch.nn.functional.pad(r, (0, 0, 0, width - r.shape[0])) for r in rows])


class EagleProposer:
    needs_hidden = True
    prompt_hidden = True
    draws_from_q = True

    def __init__(self, head: nn.Module, compiled: CompiledForward | None = None) -> None:
        """head: a models.eagle.EagleHead (`embed`, `decoder`: a causal LM of one layer, `fc`);
        compiled: its decoder's compiled forward."""
        self.head = head
        self.kv = KVState.empty(head.decoder, 0, role="eagle", compiled=compiled)
        p = next(head.fc.parameters())
        self.feats = torch.zeros(0, 0, head.config.hidden_size, dtype=p.dtype, device=p.device)  # [B, M, H]
        self.n = torch.zeros(0, dtype=torch.long, device=p.device)  # [B] pending features per row
        self._catchup = 0  # columns of the last propose's first forward: true features, kept
        self._cands_fed = 0  # columns of guessed features after it: always dropped
        self._fed: torch.Tensor | None = None  # [B] bool: rows whose pending the last propose fed

    def admit(self, rows: list[Row], hidden: list[torch.Tensor] | None = None) -> None:
        self.kv.add_rows(len(rows))
        hidden = [h[-MAX_PENDING:].to(self.feats.dtype) for h in hidden]  # (the cap holds for prompts)
        n = torch.tensor([h.shape[0] for h in hidden], device=self.n.device)
        self._cat(_pad(hidden, int(n.max())), n)

    def _cat(self, feats: torch.Tensor, n: torch.Tensor) -> None:
        width = max(self.feats.shape[1], feats.shape[1])
        grow = lambda x: torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[1]))  # noqa: E731
        self.feats = torch.cat([grow(self.feats), grow(feats)])
        self.n = torch.cat([self.n, n])

    def select(self, keep: torch.Tensor) -> None:
        self.kv.select(keep)
        self.feats, self.n = self.feats.index_select(0, keep), self.n[keep]  # (3-7x indexing's speed)

    def extend(self, other: EagleProposer) -> None:
        self.kv.extend(other.kv)
        self._cat(other.feats, other.n)

    def propose(self, rows: list[Row], ks: list[int], warp: Warp, u: torch.Tensor | None) -> Proposal:
        K = max(ks, default=0)
        self._catchup = self._cands_fed = 0
        if K == 0:
            return Proposal([[] for _ in rows])
        dev = self.n.device
        self._fed = torch.tensor([k > 0 for k in ks], device=dev)  # [B]
        m = torch.where(self._fed, self.n.clamp(max=MAX_PENDING), 0)  # [B] entries fed
        # catch-up: row b's last m[b] pending entries (feature at t, token at t + 1); K = 0: holes
        seqs = [r.tokens[len(r.tokens) - mb :] if mb else [] for r, mb in zip(rows, m.tolist(), strict=True)]
        T = max(len(s) for s in seqs)
        ids = torch.tensor([s + [0] * (T - len(s)) for s in seqs], device=dev)  # [B, T]
        before, t0 = self.kv.num_columns, time.perf_counter()
        embeds = self.head.embed(ids, last_pending(self.feats, self.n, m))  # [B, T, H]
        logits, f = self.kv.forward(self.head.decoder, seqs, logits="last", hidden=True, embeds=embeds)
        self._catchup = self.kv.num_columns - before
        # more pending features than one speculative step leaves (K + 1) were piled up by plain
        # steps: that catch-up is the price of switching to speculation, not of speculating
        sync_s = time.perf_counter() - t0 if T > K + 1 else 0.0
        sampled = warp.any_sampled
        cands, qs = [], []
        vocab = self.head.vocab  # [V'] the tokens the head drafts (None: all V)
        for j in range(K):
            c, q = draw_tokens(logits, warp, u[:, j] if sampled else None)  # [B], [S, V'] or None
            c, q = widen(c, q, vocab, self.head.config.vocab_size)  # token ids [B], q [S, V] or None
            cands.append(c)
            qs.append(q)
            if j < K - 1:  # the head's guessed feature with the candidate: [B, 1, H]
                fed = c[:, None]  # [B, 1]; rows that have all their candidates get holes
                if min(ks) <= j + 1:
                    fed = [[t] if k > j + 1 else [] for t, k in zip(c.tolist(), ks, strict=True)]
                embeds = self.head.embed(c[:, None], f[:, None])
                logits, f = self.kv.forward(self.head.decoder, fed, logits="last", hidden=True, embeds=embeds)
        self._cands_fed = K - 1
        tokens = torch.stack(cands, dim=1).tolist()  # [B, K]
        q_all = torch.stack(qs, dim=1) if sampled else None  # [S, K, V]
        return Proposal([t[:k] for t, k in zip(tokens, ks, strict=True)], q=q_all, sync_s=sync_s)

    def commit(self, num_accepted: list[int], hidden: torch.Tensor | None = None) -> None:
        """Drop the guessed entries; the target's features along each row's kept path wait."""
        dev = self.n.device
        if self._catchup:
            B = len(num_accepted)
            keep = torch.zeros(B, self._catchup + self._cands_fed, dtype=torch.bool, device=dev)
            keep[:, : self._catchup] = True
            self.kv.rollback(keep)
            self.n = torch.where(self._fed, 0, self.n)
            self._catchup = self._cands_fed = 0
        k = torch.tensor(num_accepted, device=dev) + 1  # [B] the pending token and the accepted ones
        self.feats, self.n = append_pending(self.feats, self.n, hidden, k, MAX_PENDING)
