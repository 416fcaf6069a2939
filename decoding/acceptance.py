"""Verification: which candidates the target accepts, and the token it emits after them.

Every function returns `Verdict(num_accepted [B], next_token [B])`: row b emits its first
`num_accepted[b]` candidates, then `next_token[b]` (recovered after a rejection, bonus after a full
accept). All three are exact: greedy equals plain greedy decoding token for token; the two sampling
rules leave the output distributed exactly as the target's p (Leviathan et al. 2023, Theorem 1).

Inputs share one layout: candidates [B, K] (padding is ignored past `num_candidates` [B]) and target
probabilities / argmax over T = K + 1 positions, where position j scores the token after the pending
token and the first j candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specserve.decoding.sampling import sample


@dataclass
class Verdict:
    num_accepted: torch.Tensor  # [B] long
    next_token: torch.Tensor  # [B] long


def _prefix_length(ok: torch.Tensor, num_candidates: torch.Tensor) -> torch.Tensor:
    """Length of the run of True from position 0, counting only real candidates. ok: [B, K] -> [B]."""
    K = ok.shape[1]
    real = torch.arange(K, device=ok.device)[None, :] < num_candidates[:, None]  # [B, K]
    return (ok & real).long().cumprod(dim=1).sum(dim=1)


def verify_greedy(
    target_argmax: torch.Tensor, candidates: torch.Tensor, num_candidates: torch.Tensor
) -> Verdict:
    """Accept the longest prefix equal to the target's argmax; then emit the argmax after it.

    target_argmax: [B, T], candidates: [B, K], num_candidates: [B].
    """
    K = candidates.shape[1]
    n = _prefix_length(candidates == target_argmax[:, :K], num_candidates)  # [B]
    return Verdict(n, target_argmax.gather(1, n[:, None]).squeeze(1))


def verify_rejection(
    p: torch.Tensor,
    q: torch.Tensor,
    candidates: torch.Tensor,
    num_candidates: torch.Tensor,
    u_accept: torch.Tensor,
    u_next: torch.Tensor,
) -> Verdict:
    """Leviathan et al. Algorithm 1 for candidates sampled from the draft's q.

    p: [B, T, V] target probs, q: [B, K, V] draft probs the candidates were drawn from,
    u_accept: [B, K] uniforms in [0, 1); u_next: [B] uniform for the emitted token, or [B, T] one per
    position (the emitted token then takes the one of its own position).
    Accept candidate j with probability min(1, p_j(x) / q_j(x)); at the first rejection emit a
    recovered token from norm(max(0, p_j - q_j)); after a full accept, a bonus token from p_K.
    """
    B, K = candidates.shape
    c = candidates.clamp(min=0)[:, :, None]  # [B, K, 1]
    p_c = p[:, :K].gather(2, c).squeeze(2)  # [B, K]
    q_c = q.gather(2, c).squeeze(2)  # [B, K]
    n = _prefix_length(u_accept.to(p_c.dtype) * q_c < p_c, num_candidates)  # u < p/q without dividing
    rows = torch.arange(B, device=p.device)
    p_n = p[rows, n]  # [B, V]
    q_pad = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)  # [B, T, V]; q = 0 after the last candidate
    residual = (p_n - q_pad[rows, n].to(p_n.dtype)).clamp(min=0)  # [B, V]
    full = n == num_candidates  # bonus rows sample p itself
    degenerate = residual.sum(-1) <= 0  # p == q: rejection has probability 0; keep sampling defined
    dist = torch.where((full | degenerate)[:, None], p_n, residual)
    if u_next.dim() == 2:
        u_next = u_next.gather(1, n[:, None]).squeeze(1)
    return Verdict(n, sample(dist, u_next))


def verify_match(
    p: torch.Tensor, candidates: torch.Tensor, num_candidates: torch.Tensor, u: torch.Tensor
) -> Verdict:
    """Deterministic candidates (prompt lookup, Medusa): sample x_j ~ p_j, accept while x_j equals c_j.

    p: [B, T, V], u: [B, T]. The emitted tokens are exactly the x_j, so they follow p.
    """
    K = candidates.shape[1]
    x = sample(p, u)  # [B, T]
    n = _prefix_length(x[:, :K] == candidates, num_candidates)
    return Verdict(n, x.gather(1, n[:, None]).squeeze(1))
