"""The proposer contract (transformers' candidate generator, plus batch membership) and `none`.

A proposer offers each row candidates for the next tokens; `decoding/step.py:decode_step` verifies
them with one target forward, accepts a prefix (a chain) or a root path (a tree), and tells the
proposer what was kept. Methods: `none` (here), `draft` (draft.py), `ngram` (ngram.py), `medusa`
(medusa.py), `eagle` (eagle.py); each file documents its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from specserve.decoding.kv import KVState
from specserve.decoding.row import Row
from specserve.decoding.sampling import Warp
from specserve.decoding.stats import Forward
from specserve.decoding.tree import Tree

Emit = Callable[[Row, list[int]], None]  # called with each row's newly emitted tokens


@dataclass
class Proposal:
    """Candidates for each row of a batch, as a chain or as a token tree.

    Chain (tree None): row b proposes tokens[b] in order (at most its k, possibly none).
    Tree: every row proposes the nodes of `tree`; tokens[b][i] is the token at node i + 1 (node 0 is
    the row's pending token), and row b may accept at most its k of them along one root path.
    """

    tokens: list[list[int]]
    q: torch.Tensor | None = None  # [S, C, V] the draft probs candidate c was sampled from, for the
    # sampled rows (`Warp.sampled`) only (chain: C = K, tree: C = N - 1, node c + 1 given its
    # parent); None: deterministic candidates, or every row greedy
    tree: Tree | None = None
    sync_s: float = 0.0  # of the proposing time, spent catching up on what plain steps left (rows
    # that joined, tokens or features piled up): the K policy does not charge it to speculating
    forwards: list[Forward] = field(default_factory=list)  # model calls outside any cache (Medusa heads)


class Proposer(Protocol):
    needs_hidden: bool  # admit() and commit() want the target's last hidden states
    prompt_hidden: bool  # admit() wants them at every prompt position the target fed
    draws_from_q: bool  # candidates are sampled from q: the step hands propose() uniforms
    kv: KVState | None  # the proposer's own cache (a draft model's), if any: its bytes and forwards

    def propose(self, rows: list[Row], ks: list[int], warp: Warp, u: torch.Tensor | None) -> Proposal:
        """Up to ks[b] candidates row b may accept; u [S, K] uniforms of the sampled rows when
        draws_from_q and some row samples."""
        ...

    def commit(self, num_accepted: list[int], hidden: torch.Tensor | None = None) -> None:
        """Row b kept its first num_accepted[b] candidates (along the accepted path): roll back the
        rest. `hidden` [B, P, H], when needs_hidden: the target's last hidden states along that path
        (position 0: the pending token; row b's valid ones 0..num_accepted[b])."""
        ...

    def admit(self, rows: list[Row], hidden: torch.Tensor | None = None) -> None:
        """New rows join after the existing ones (their prompt and first token are in row.tokens);
        `hidden` [B_new, H] is the target's last hidden state per row when needs_hidden; with
        prompt_hidden, a list of [n_b, H]: the states at the last n_b prompt positions (those
        the target fed: a prefix cache may have held the rest)."""
        ...

    def select(self, keep: torch.Tensor) -> None:
        """Keep only these row indices ([B'] long), in that order."""
        ...

    def extend(self, other: Proposer) -> None:
        """Take over the state of another proposer's rows, after ours."""
        ...


class NoProposer:
    """`none`: plain autoregressive decoding. Nothing to propose, nothing to keep."""

    needs_hidden = False
    prompt_hidden = False
    draws_from_q = False
    kv: KVState | None = None

    def propose(self, rows: list[Row], ks: list[int], warp: Warp, u: torch.Tensor | None) -> Proposal:
        return Proposal([[] for _ in rows])

    def commit(self, num_accepted: list[int], hidden: torch.Tensor | None = None) -> None:
        pass

    def admit(self, rows: list[Row], hidden: torch.Tensor | None = None) -> None:
        pass

    def select(self, keep: torch.Tensor) -> None:
        pass

    def extend(self, other: Proposer) -> None:
        pass
