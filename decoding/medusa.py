"""`medusa`: heads on the target's last hidden state guess the next tokens; a token tree verifies
many guesses in one target forward (Cai et al. 2024), for every row of the batch.

The four named steps of one decode step: generate candidates (each head's top-k, laid on the tree),
tree verification (one forward with a 4D tree mask), evaluate posterior (the longest path the target
agrees with), update inputs (keep that path's KV, emit its tokens plus the target's next one).
Greedy acceptance equals plain greedy decoding; sampling follows the tree with tokens sampled from
p at each node and stops at the first miss, which is exact because the candidates are deterministic.

Under adaptive K (`auto`), K is the depth the tree is cut to: the controller prices each depth from
per-depth acceptance and measured step time like any other K, and K = 0 is a plain step (through
`decode_step`, whose hidden state still feeds the heads). A lockstep clip cuts accepted paths.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedModel

from specserve.decoding import lockstep
from specserve.decoding.proposer import Emit, NoProposer
from specserve.decoding.row import Row
from specserve.decoding.sampling import position_uniforms, sample, warp_probs
from specserve.decoding.stats import Forward, StepStats
from specserve.decoding.step import decode_step, record_step
from specserve.decoding.tree import DEFAULT_CHOICES, Tree, build_tree

if TYPE_CHECKING:
    from specserve.decoding.batch import SubBatch


def medusa_setup(heads: nn.Module, tree: Tree | None, device: torch.device) -> tuple[nn.Module, Tree]:
    """The heads and their tree: as given, else the one `bench tree` stored, else a default."""
    n_heads = heads.config.num_heads
    stored = getattr(heads.config, "tree", None)
    tree = tree or build_tree(stored or DEFAULT_CHOICES[min(n_heads, max(DEFAULT_CHOICES))], n_heads)
    if tree.max_depth > n_heads:
        raise ValueError(f"the tree is {tree.max_depth} deep but there are only {n_heads} Medusa heads")
    return heads, tree.to(device)


class MedusaProposer(NoProposer):
    """State per row: the target's last hidden state at the row's newest consumed token."""

    needs_hidden = True

    def __init__(self, heads: nn.Module, tree: Tree) -> None:
        self.heads, self.tree = heads, tree
        self.hidden: torch.Tensor | None = None  # [B, H]
        self._trees: dict[int, Tree] = {tree.max_depth: tree}

    def tree_to(self, depth: int) -> Tree:
        """The tree cut to its first `depth` levels (adaptive K is Medusa's depth; depth >= 1)."""
        if depth not in self._trees:
            keep = [c for c in self.tree.choices if len(c) <= depth]
            self._trees[depth] = build_tree(keep, self.tree.max_depth).to(self.tree.depth.device)
        return self._trees[depth]

    def commit(self, num_accepted: list[int], hidden: torch.Tensor | None = None) -> None:
        """After a step without a tree (K = 0): the heads read the newest consumed token's state."""
        if hidden is not None:
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


def candidates(heads: nn.Module, hidden: torch.Tensor, tree: Tree) -> torch.Tensor:
    """hidden [B, H] -> tree node tokens [B, N - 1] (node i + 1 holds head[i]'s rank[i]-th guess)."""
    logits = heads(hidden)  # [B, K, V]
    topk = logits.topk(tree.max_rank, dim=-1).indices  # [B, K, R]
    return topk[:, tree.head[1:], tree.rank[1:]]


def greedy_path(ids: torch.Tensor, argmax: torch.Tensor, tree: Tree, depth_cap: torch.Tensor):
    """Longest root path whose every node equals the target's argmax at its parent.

    ids, argmax: [B, N]; depth_cap [B]. Returns (path nodes [B, D + 1], accepted count [B]).
    """
    B, N = ids.shape
    correct = ids == argmax.gather(1, tree.parent[None].expand(B, N))  # [B, N]
    correct &= tree.depth[None] <= depth_cap[:, None]
    ok = correct[:, tree.paths[:, 1:].clamp(min=0)] & (tree.paths[None, :, 1:] >= 0)  # [B, P, D]
    length = ok.long().cumprod(-1).sum(-1)  # [B, P]
    best = length.argmax(-1)  # [B] (the first longest)
    return tree.paths[best], length.gather(1, best[:, None]).squeeze(1)


def sampled_path(
    ids: list[int], p: torch.Tensor, u: torch.Tensor, tree: Tree, cap: int
) -> tuple[list[int], int]:
    """One row: sample x ~ p at the current node; follow the child holding x; stop at the first miss.

    p [N, V], u [D + 1]. Returns (accepted nodes, the token emitted after them).
    """
    node, path = 0, []
    for d in range(tree.max_depth + 1):
        x = int(sample(p[node], u[d]))
        child = next((c for c in tree.children[node] if ids[c] == x and len(path) < cap), None)
        if child is None:
            return path, x
        path.append(child)
        node = child
    raise AssertionError("unreachable: a leaf has no children")


def medusa_step(
    target: PreTrainedModel,
    batch: SubBatch,
    emit: Emit,
    k_auto: int | None = None,
    lock: list[int] | None = None,
) -> StepStats:
    """One tree step. k_auto: the depth an adaptive controller chose (0: a plain step) for rows
    with spec.adaptive; the others take the whole tree. lock: lockstep group ids to clip by."""
    rows, prop = batch.rows, batch.proposer
    full: Tree = prop.tree
    want = [k_auto if r.spec.adaptive and k_auto is not None else full.max_depth for r in rows]
    cap_list = [r.budget(min(k, full.max_depth)) for r, k in zip(rows, want, strict=True)]
    if max(cap_list) == 0:  # a plain step (the heads still get the newest hidden state)
        return decode_step(target, batch, emit, 0, lock)
    tree = prop.tree_to(max(cap_list))
    B, dev = len(rows), batch.kv.mask.device
    caps = torch.tensor(cap_list, device=dev)  # [B] deepest acceptable
    # 1. generate candidates
    t0 = time.perf_counter()
    nodes = candidates(prop.heads, prop.hidden, tree)  # [B, N - 1]
    pending = torch.tensor([[r.tokens[-1]] for r in rows], device=dev)  # [B, 1]
    ids = torch.cat([pending, nodes], dim=1)  # [B, N]
    t1 = time.perf_counter()
    # 2. tree verification
    logits, hidden = batch.kv.forward_tree(target, ids, tree)  # [B, N, V], [B, N, H]
    # 3. evaluate posterior
    argmax = logits.argmax(-1)  # [B, N]
    path, n = greedy_path(ids, argmax, tree, caps)  # [B, D + 1], [B]
    last = path.gather(1, n[:, None]).squeeze(1)  # [B] newest accepted node (0: the root)
    nxt = argmax.gather(1, last[:, None]).squeeze(1)  # [B]
    paths, n_list, nxt_list = path.tolist(), n.tolist(), nxt.tolist()
    ids_list = ids.tolist()
    warp = batch.warp
    s = (~warp.greedy).nonzero().squeeze(1).tolist()
    if s:
        p = warp_probs(logits[s], warp.select(torch.tensor(s, device=dev)))  # [S, N, V]
        u = position_uniforms(
            [rows[b].stream for b in s], [rows[b].num_generated for b in s], tree.max_depth + 1, dev
        )  # [S, D + 1]: depth d emits generated position num_generated + d
        for i, b in enumerate(s):
            nodes_b, nxt_list[b] = sampled_path(ids_list[b], p[i], u[i], tree, cap_list[b])
            paths[b], n_list[b] = [0, *nodes_b], len(nodes_b)
    accepted = list(n_list)
    if lock is not None:  # the path's node tokens are the candidates a group is clipped on
        path_tokens = [[ids_list[b][c] for c in paths[b][1:] if c >= 0] for b in range(B)]
        n_t, nxt_t, _ = lockstep.clip(torch.tensor(n_list), torch.tensor(nxt_list), path_tokens, lock)
        n_list, nxt_list = n_t.tolist(), nxt_t.tolist()
    last = torch.tensor([pb[nb] for pb, nb in zip(paths, n_list, strict=True)], device=dev)
    # 4. update inputs: keep the root and the accepted path; the heads read the newest hidden state
    keep = torch.zeros(B, tree.num_nodes, dtype=torch.bool, device=dev)
    for b, (pb, nb) in enumerate(zip(paths, n_list, strict=True)):
        keep[b, pb[: nb + 1]] = True
    batch.kv.rollback(keep)
    prop.hidden = hidden[torch.arange(B, device=dev), last]
    t2 = time.perf_counter()
    stats = StepStats(
        batch.method, "decode", B, propose_s=t1 - t0, verify_s=t2 - t1, k=tree.max_depth,
        lockstep=lock is not None and bool(k_auto),
    )  # fmt: skip
    stats.forwards = [Forward("heads", [1] * B, 0), *batch.kv.drain()]
    emitted = [[ids_list[b][c] for c in paths[b][1 : n_list[b] + 1]] + [nxt_list[b]] for b in range(B)]
    # a row's draft tokens are what it could have accepted: the tree's depth within its budget
    record_step(stats, rows, cap_list, accepted, [tree.num_nodes] * B, emitted, emit, kept=n_list)
    return stats
