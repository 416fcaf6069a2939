"""`medusa`: heads on the target's last hidden state guess the next tokens, laid out as a token tree
(Cai et al. 2024) that one target forward verifies for every row of the batch.

Proposing: each head's top-k guesses fill the nodes of the tree (`decoding/tree.py`), node i holding
head[i]'s rank[i]-th guess; `decode_step` verifies the tree with a 4D tree mask and keeps the
longest root path the target agrees with (greedy), or follows samples of p down the tree (exact,
since the candidates are deterministic). The heads read the hidden state of each row's newest
consumed token, which `commit` takes from the accepted path (plain steps included).

K is the depth the tree is cut to (`auto` chooses it per step; 0 is a plain step).
"""

from __future__ import annotations

import torch
from torch import nn

from specserve.decoding.proposer import NoProposer, Proposal
from specserve.decoding.row import Row
from specserve.decoding.sampling import Warp
from specserve.decoding.stats import Forward
from specserve.decoding.tree import DEFAULT_CHOICES, Tree, build_tree


def medusa_setup(heads: nn.Module, tree: Tree | None, device: torch.device) -> tuple[nn.Module, Tree]:
    """The heads and their tree: as given, else the one `bench tree` stored, else a default."""
    n_heads = heads.config.num_heads
    stored = getattr(heads.config, "tree", None)
    tree = tree or build_tree(stored or DEFAULT_CHOICES[min(n_heads, max(DEFAULT_CHOICES))], n_heads)
    if tree.max_depth > n_heads:
        raise ValueError(f"the tree is {tree.max_depth} deep but there are only {n_heads} Medusa heads")
    return heads, tree.to(device)


def candidates(heads: nn.Module, hidden: torch.Tensor, tree: Tree) -> torch.Tensor:
    """hidden [B, H] -> tree node tokens [B, N - 1] (node i + 1 holds head[i]'s rank[i]-th guess)."""
    logits = heads(hidden)  # [B, K, V]
    topk = logits.topk(tree.max_rank, dim=-1).indices  # [B, K, R]
    return topk[:, tree.head[1:], tree.rank[1:]]


class MedusaProposer(NoProposer):
    """State per row: the target's last hidden state at the row's newest consumed token."""

    needs_hidden = True

    def __init__(self, heads: nn.Module, tree: Tree) -> None:
        self.heads, self.tree = heads, tree
        self.hidden: torch.Tensor | None = None  # [B, H]
        self._trees: dict[int, Tree] = {tree.max_depth: tree}

    def tree_to(self, depth: int) -> Tree:
        """The tree cut to its first `depth` levels (depth >= 1)."""
        depth = min(depth, self.tree.max_depth)
        if depth not in self._trees:
            keep = [c for c in self.tree.choices if len(c) <= depth]
            self._trees[depth] = build_tree(keep, self.tree.max_depth).to(self.tree.depth.device)
        return self._trees[depth]

    def propose(self, rows: list[Row], ks: list[int], warp: Warp, u: torch.Tensor | None) -> Proposal:
        if max(ks, default=0) == 0:  # a plain step (its hidden state still reaches the heads)
            return Proposal([[] for _ in rows])
        tree = self.tree_to(max(ks))
        nodes = candidates(self.heads, self.hidden, tree)  # [B, N - 1]
        return Proposal(nodes.tolist(), tree=tree, forwards=[Forward("heads", [1] * len(rows), 0)])

    def commit(self, num_accepted: list[int], hidden: torch.Tensor | None = None) -> None:
        """The heads next read the hidden state at each row's newest kept position."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        self.hidden = hidden[rows, torch.tensor(num_accepted, device=hidden.device)]  # [B, H]

    def admit(self, rows: list[Row], hidden: torch.Tensor | None = None) -> None:
        self.hidden = hidden

    def select(self, keep: torch.Tensor) -> None:
        if self.hidden is not None:
            self.hidden = self.hidden[keep]

    def extend(self, other: MedusaProposer) -> None:
        parts = [h for h in (self.hidden, other.hidden) if h is not None]
        self.hidden = torch.cat(parts) if parts else None
