"""`draft`: a small model proposes K tokens autoregressively from its own batched cache.

The draft lags the target by the tokens it has not consumed yet: usually the pending token, two
tokens when all K candidates were accepted (the K-th was sampled but never fed back) - gpt-fast's
"all accepted" case. `propose` feeds those first, so the lag needs no special path.

The draft syncs lazily: a joining row is not prefilled in the draft until a step speculates, and
plain steps (K = 0, chosen by adaptive speculation) do not feed it, so a plain step of a `draft`
batch costs what a `none` step costs. The first speculative step prefills the rows the draft has
never seen apart (a batch of their own, spliced into their places), then catches every row up at once.

A draft model restricted to a reduced vocabulary (models/draft_vocab.py) proposes token ids from it;
its q is 0 for the other tokens.
"""

from __future__ import annotations

import time

import torch
from transformers import PreTrainedModel

from specserve.decoding.compiled import CompiledForward
from specserve.decoding.kv import KVState
from specserve.decoding.prefix_cache import PrefixCache, prefill_kv
from specserve.decoding.proposer import Proposal
from specserve.decoding.row import Row
from specserve.decoding.sampling import Warp, draw_tokens, widen

STEADY_LAG = 2  # tokens a draft is behind after a speculative step (2 when all K were accepted)


class DraftProposer:
    needs_hidden = False
    prompt_hidden = False
    draws_from_q = True

    def __init__(
        self,
        model: PreTrainedModel,
        prefix: PrefixCache | None = None,
        compiled: CompiledForward | None = None,
    ) -> None:
        self.model = model
        self.vocab = getattr(model, "draft_vocab", None)  # [V'] the tokens it drafts (None: all V)
        self.size = getattr(model, "draft_vocab_size", 0)  # V, the target's
        self.prefix = prefix  # the draft's prefix cache (decoding/prefix_cache.py), or None
        self.kv = KVState.empty(model, 0, role="draft", compiled=compiled)
        self._catchup = 0  # columns of the last propose's first forward: real tokens, always kept
        self._cands_fed = 0  # candidate columns fed after it: kept only where accepted
        self._joined = False  # rows joined since the last proposal: some may need their prefill

    def admit(self, rows: list[Row], hidden: torch.Tensor | None = None) -> None:
        self.kv.add_rows(len(rows))  # prefilled only when a step first speculates (`_sync_fresh`)
        self._joined = True

    def _sync_fresh(self, rows: list[Row], ks: list[int]) -> bool:
        """Prefill, in a batch of their own, the rows about to be drafted for that the draft has
        consumed nothing of (all but their pending token), then splice them into their places.
        Looks only when rows have joined (or a fresh row was left for a later step)."""
        if not self._joined:
            return False
        seen = self.kv.seen.tolist()
        self._joined = any(s == 0 and not k for s, k in zip(seen, ks, strict=True))
        fresh = [i for i, s in enumerate(seen) if s == 0 and ks[i] and len(rows[i].tokens) > 1]
        if not fresh:
            return False
        new, _, _ = prefill_kv(self.model, [rows[i].tokens[:-1] for i in fresh], self.prefix, role="draft")
        self.kv.splice(torch.tensor(fresh, device=self.kv.mask.device), new)
        return True

    def select(self, keep: torch.Tensor) -> None:
        self.kv.select(keep)

    def extend(self, other: DraftProposer) -> None:
        self.kv.extend(other.kv)
        self._joined = self._joined or other._joined

    def propose(self, rows: list[Row], ks: list[int], warp: Warp, u: torch.Tensor | None) -> Proposal:
        K = max(ks, default=0)
        self._catchup = self._cands_fed = 0
        if K == 0:
            return Proposal([[] for _ in rows])
        t0 = time.perf_counter()
        synced = self._sync_fresh(rows, ks)
        t1 = time.perf_counter()
        sampled = warp.any_sampled
        # rows at K = 0 are not fed (holes): they catch up at their next speculative step
        unseen = [r.tokens[s:] if k else [] for r, s, k in zip(rows, self.kv.seen.tolist(), ks, strict=True)]
        before = self.kv.num_columns
        logits = self.kv.forward(self.model, unseen, logits="last")  # [B, V]
        self._catchup = self.kv.num_columns - before
        # prefilling rows the draft never saw, and catching up on more than the 1-2 tokens steady
        # speculation leaves it behind, are the price of the plain steps before this one, not of
        # speculating: adaptive K keeps them out of K's cost and charges them to switching
        # (otherwise a trial after plain steps looks dear, and plain steps follow)
        lag = max(len(u) for u in unseen)
        sync_s = (t1 - t0 if synced else 0.0) + (time.perf_counter() - t1 if lag > STEADY_LAG else 0.0)
        cands, qs = [], []
        for j in range(K):
            c, q = draw_tokens(logits, warp, u[:, j] if sampled else None)  # [B], [S, V'] or None
            c, q = widen(c, q, self.vocab, self.size)  # token ids [B], q [S, V] or None
            cands.append(c)
            qs.append(q)
            if j < K - 1:  # the K-th candidate is never fed: the target verifies it
                fed = c[:, None]  # [B, 1]; rows that have all their candidates get holes
                if min(ks) <= j + 1:
                    fed = [[t] if k > j + 1 else [] for t, k in zip(c.tolist(), ks, strict=True)]
                logits = self.kv.forward(self.model, fed, logits="last")
        self._cands_fed = K - 1
        tokens = torch.stack(cands, dim=1).tolist()  # [B, K]
        q_all = torch.stack(qs, dim=1) if sampled else None  # [S, K, V]
        return Proposal([t[:k] for t, k in zip(tokens, ks, strict=True)], q=q_all, sync_s=sync_s)

    def commit(self, num_accepted: list[int], hidden: torch.Tensor | None = None) -> None:
        """Keep the catch-up columns and the first min(n, K-1) candidate columns of each row."""
        if self._catchup == 0:
            return
        dev = self.kv.mask.device
        n = torch.tensor(num_accepted, device=dev)[:, None]  # [B, 1]
        j = torch.arange(self._cands_fed, device=dev)[None, :]  # [1, K-1]
        catchup = torch.ones(len(num_accepted), self._catchup, dtype=torch.bool, device=dev)
        self.kv.rollback(torch.cat([catchup, j < n], dim=1))
        self._catchup = self._cands_fed = 0
