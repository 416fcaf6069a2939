"""The proposer interface (transformers' candidate generator, plus batch membership) and `none`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from specserve.decoding.row import Row
from specserve.decoding.sampling import Warp
from specserve.decoding.stats import Forward

Emit = Callable[[Row, list[int]], None]  # called with each row's newly emitted tokens


@dataclass
class Proposal:
    """Candidates for each row of a batch."""

    tokens: list[list[int]]  # row b proposes tokens[b] (at most its k, possibly none)
    q: torch.Tensor | None = (
        None  # [B, K, V] draft probs the candidates were sampled from; None = deterministic
    )
    sync_s: float = 0.0  # of the proposing time, spent prefilling rows that joined during plain steps


class Proposer(Protocol):
    needs_hidden: bool  # admit() wants the target's last hidden state of each joining row

    def propose(self, rows: list[Row], ks: list[int], warp: Warp, u: torch.Tensor) -> Proposal:
        """Up to ks[b] candidates for row b; u [B, K] uniforms for sampled proposals."""
        ...

    def commit(self, num_accepted: list[int], hidden: torch.Tensor | None = None) -> None:
        """Row b's first num_accepted[b] candidates were accepted: roll back the rest. `hidden`
        [B, T, H]: the target's last hidden states at the fed positions, when needs_hidden."""
        ...

    def admit(self, rows: list[Row], hidden: torch.Tensor | None = None) -> None:
        """New rows join after the existing ones (their prompt and first token are in row.tokens);
        `hidden` [B_new, H] is the target's last hidden state per row when needs_hidden."""
        ...

    def select(self, keep: torch.Tensor) -> None:
        """Keep only these row indices ([B'] long), in that order."""
        ...

    def extend(self, other: Proposer) -> None:
        """Take over the state of another proposer's rows, after ours."""
        ...

    def drain_forwards(self) -> list[Forward]:
        """Model forwards run since the last drain (for bytes/FLOPs accounting)."""
        ...

    def nbytes(self) -> int:
        """Bytes of cache this proposer holds."""
        ...


class NoProposer:
    """Plain autoregressive decoding: nothing to propose, nothing to keep."""

    needs_hidden = False

    def propose(self, rows: list[Row], ks: list[int], warp: Warp, u: torch.Tensor) -> Proposal:
        return Proposal([[] for _ in rows])

    def commit(self, num_accepted: list[int], hidden: torch.Tensor | None = None) -> None:
        pass

    def admit(self, rows: list[Row], hidden: torch.Tensor | None = None) -> None:
        pass

    def select(self, keep: torch.Tensor) -> None:
        pass

    def extend(self, other: Proposer) -> None:
        pass

    def drain_forwards(self) -> list[Forward]:
        return []

    def nbytes(self) -> int:
        return 0
