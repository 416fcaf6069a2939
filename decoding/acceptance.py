"""Verification: which candidates the target accepts, and the token it emits after them.

Every rule gives row b's accepted count and the token it emits after them (recovered after a
rejection, bonus after a full accept); a tree rule also gives the accepted root path. All are exact:
greedy equals plain greedy decoding token for token; the sampling rules leave the output
distributed exactly as the target's p (Leviathan et al. 2023, Theorem 1).

Chains: candidates [B, K] (padding is ignored past `num_candidates` [B]) and target probabilities /
argmax over T = K + 1 positions, where position j scores the token after the pending token and the
first j candidates. Trees: node tokens ids [B, N] (node 0: the pending token) and target outputs at
every node, scoring the token after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specserve.decoding.sampling import sample
from specserve.decoding.tree import Tree


@dataclass
class Verdict:
    num_accepted: torch.Tensor  # [B] long
    next_token: torch.Tensor  # [B] long
    path: torch.Tensor | None = None  # [B, D + 1] node indices from the root (a tree's; None: a chain)


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


def tree_greedy(ids: torch.Tensor, argmax: torch.Tensor, tree: Tree, depth_cap: torch.Tensor) -> Verdict:
    """Longest root path whose every node equals the target's argmax at its parent, within each
    row's depth cap. ids, argmax: [B, N]; depth_cap [B]."""
    B, N = ids.shape
    correct = ids == argmax.gather(1, tree.parent[None].expand(B, N))  # [B, N]
    correct &= tree.depth[None] <= depth_cap[:, None]
    ok = correct[:, tree.paths[:, 1:].clamp(min=0)] & (tree.paths[None, :, 1:] >= 0)  # [B, P, D]
    length = ok.long().cumprod(-1).sum(-1)  # [B, P]
    best = length.argmax(-1)  # [B] (the first longest)
    path = tree.paths[best]  # [B, D + 1]
    n = length.gather(1, best[:, None]).squeeze(1)  # [B]
    last = path.gather(1, n[:, None]).squeeze(1)  # [B] the newest accepted node (0: the root)
    return Verdict(n, argmax.gather(1, last[:, None]).squeeze(1), path)


def tree_match(
    ids: list[int], p: torch.Tensor, u: torch.Tensor, tree: Tree, cap: int
) -> tuple[list[int], int]:
    """One row's deterministic candidates on a tree: sample x ~ p at the current node, follow the
    child holding x, stop at the first miss (or at the depth cap). Exact: every emitted token is a
    sample of p at its position. p [N, V], u [D + 1]. Returns (accepted nodes, the token after them)."""
    node, path = 0, []
    for d in range(tree.max_depth + 1):
        x = int(sample(p[node], u[d]))
        child = next((c for c in tree.children[node] if ids[c] == x and len(path) < cap), None)
        if child is None:
            return path, x
        path.append(child)
        node = child
    raise AssertionError("unreachable: a leaf has no children")
