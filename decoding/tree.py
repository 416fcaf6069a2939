"""Token trees for Medusa verification, computed once per tree from a list of paths.

A tree is given as `medusa_choices`: paths of top-k ranks, one rank per depth, e.g. (0,), (1,),
(0, 0) = the top-1 and top-2 guesses of head 0, and the top-1 guess of head 1 after head 0's top-1.
Node 0 is the root (the row's pending token); node i > 0 holds choices[i - 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Sparse default trees (paths of top-k ranks) per head count: wide at depth 1, narrowing deeper.
DEFAULT_CHOICES: dict[int, list[tuple[int, ...]]] = {
    1: [(0,), (1,), (2,)],
    2: [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0)],
    3: [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0)],
    4: [
        (0,),
        (1,),
        (2,),
        (0, 0),
        (0, 1),
        (1, 0),
        (0, 0, 0),
        (0, 0, 1),
        (0, 1, 0),
        (0, 0, 0, 0),
        (0, 0, 0, 1),
    ],
    5: [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 0, 0, 0), (0, 0, 0, 0, 0)],
}


@dataclass(frozen=True)
class Tree:
    """Buffers for one tree. N nodes including the root, P root-to-leaf paths, D = depth."""

    choices: tuple[tuple[int, ...], ...]
    depth: torch.Tensor  # [N] 0 for the root
    parent: torch.Tensor  # [N] parent node (the root points at itself)
    head: torch.Tensor  # [N] head whose guess the node holds (depth - 1; unused for the root)
    rank: torch.Tensor  # [N] which of that head's top-k
    ancestors: torch.Tensor  # [N, N] bool: node i may attend to node j (j is i or an ancestor)
    paths: torch.Tensor  # [P, D + 1] node indices from the root along each leaf path, -1 padded
    children: tuple[tuple[int, ...], ...]  # per node, its child nodes

    @property
    def num_nodes(self) -> int:
        return len(self.choices) + 1

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())

    @property
    def max_rank(self) -> int:
        return int(self.rank.max()) + 1

    def to(self, device: torch.device) -> Tree:
        move = {
            k: getattr(self, k).to(device) for k in ("depth", "parent", "head", "rank", "ancestors", "paths")
        }
        return Tree(self.choices, children=self.children, **move)


def build_tree(choices: list[tuple[int, ...]] | list[list[int]], num_heads: int) -> Tree:
    """Validate and index a tree; paths deeper than the heads or missing a prefix are refused."""
    paths = sorted({tuple(int(r) for r in c) for c in choices}, key=lambda c: (len(c), c))
    if not paths:
        raise ValueError("a Medusa tree needs at least one path")
    for c in paths:
        if not c or min(c) < 0:
            raise ValueError(f"tree path {list(c)} must be a non-empty list of ranks >= 0")
        if len(c) > num_heads:
            raise ValueError(
                f"tree path {list(c)} is {len(c)} deep but there are only {num_heads} Medusa heads"
            )
        if len(c) > 1 and c[:-1] not in paths:
            raise ValueError(f"tree path {list(c)} has no parent path {list(c[:-1])}")
    index = {c: i + 1 for i, c in enumerate(paths)}  # node ids; 0 is the root
    N = len(paths) + 1
    parent = [0] + [index.get(c[:-1], 0) for c in paths]
    ancestors = torch.eye(N, dtype=torch.bool)
    for i in range(1, N):
        ancestors[i] |= ancestors[parent[i]]
        ancestors[i, 0] = True
    children = tuple(tuple(j for j in range(1, N) if parent[j] == i) for i in range(N))
    leaves = [i for i in range(1, N) if not children[i]]
    D = max(len(c) for c in paths)
    rows = []
    for leaf in leaves:
        chain = [leaf]
        while chain[-1] != 0:
            chain.append(parent[chain[-1]])
        chain = chain[::-1]
        rows.append(chain + [-1] * (D + 1 - len(chain)))
    return Tree(
        choices=tuple(paths),
        depth=torch.tensor([0] + [len(c) for c in paths]),
        parent=torch.tensor(parent),
        head=torch.tensor([0] + [len(c) - 1 for c in paths]),
        rank=torch.tensor([0] + [c[-1] for c in paths]),
        ancestors=ancestors,
        paths=torch.tensor(rows),
        children=children,
    )
