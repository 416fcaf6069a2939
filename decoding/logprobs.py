"""Log-probabilities of emitted tokens (OpenAI's `logprobs` / `top_logprobs`), from the target.

A token's logprob comes from the distribution it was drawn from: the target's logits at its
position after the row's temperature, top-k and top-p (tokens those filters drop get -inf,
reported as FILTERED). Greedy rows (temperature 0) report the unwarped softmax, as OpenAI and vLLM
do at temperature 0. The target's logits at an emitted token's position are the same whether the
token came from a plain step or was accepted from a draft, so speculation does not change them.
"""

from __future__ import annotations

import math

import torch

from specserve.decoding.row import Row, TokenLogprob
from specserve.decoding.sampling import Warp, warp_probs

FILTERED = -9999.0  # a token top-k / top-p removed (log 0); JSON has no -inf (vLLM's value too)


def wanted(rows: list[Row]) -> list[int]:
    """Indices of the rows that asked for logprobs."""
    return [b for b, r in enumerate(rows) if r.sampling.logprobs is not None]


def token_logprobs(
    logits: torch.Tensor, rows: list[Row], warp: Warp, emitted: list[list[int]], nodes: torch.Tensor | None
) -> list[list[TokenLogprob] | None]:
    """Per row (None where it did not ask): the logprobs of its emitted tokens.

    logits [B, T, V]; emitted[b][j] is the token row b emits at its j-th position, whose
    distribution is logits[b, j] for a chain, or logits[b, nodes[b, j]] for a tree (nodes [B, D + 1],
    each row's accepted path)."""
    out: list[list[TokenLogprob] | None] = [None] * len(rows)
    asked = wanted(rows)
    if not asked:
        return out
    idx = torch.tensor(asked, device=logits.device)
    x = logits[idx]  # [A, T, V]
    if nodes is not None:
        x = x.gather(1, nodes[idx].clamp(min=0)[..., None].expand(-1, -1, x.shape[-1]))  # [A, D + 1, V]
    sub = warp.select(idx)
    logp = x.double().log_softmax(-1)  # [A, T, V] greedy rows: the unwarped distribution
    if sub.any_sampled:  # sampled rows: the distribution they were drawn from
        logp = torch.where(sub.greedy[:, None, None], logp, warp_probs(x.double(), sub).log())
    n_top = max(rows[b].sampling.logprobs for b in asked)
    top_lp, top_id = logp.topk(max(n_top, 1), dim=-1)  # [A, T, n]
    for a, b in enumerate(asked):
        toks, n = emitted[b], rows[b].sampling.logprobs
        chosen = logp[a, torch.arange(len(toks)), torch.tensor(toks)].tolist()
        ids, lps = top_id[a, : len(toks), :n].tolist(), top_lp[a, : len(toks), :n].tolist()
        out[b] = [
            TokenLogprob(t, _finite(lp), [(i, _finite(v)) for i, v in zip(ti, tv, strict=True)])
            for t, lp, ti, tv in zip(toks, chosen, ids, lps, strict=True)
        ]
    return out


def _finite(lp: float) -> float:
    return lp if math.isfinite(lp) else FILTERED
