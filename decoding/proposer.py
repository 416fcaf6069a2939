"""The proposer interface (transformers' candidate generator, plus batch membership) and `none`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from decoding.row import Row
from decoding.sampling import Warp
from decoding.stats import Forward


@dataclass
class Proposal:
    """Candidates for each row of a batch."""

    tokens: list[list[int]]  # row b proposes tokens[b] (at most its k, possibly none)
    q: torch.Tensor | None = (
        None  # [B, K, V] draft probs the candidates were sampled from; None = deterministic
    )


class Proposer(Protocol):
    def propose(self, rows: list[Row], ks: list[int], warp: Warp, u: torch.Tensor) -> Proposal:
        """Up to ks[b] candidates for row b; u [B, K] uniforms for sampled proposals."""
        ...

    def commit(self, num_accepted: list[int]) -> None:
        """Row b's first num_accepted[b] candidates were accepted: roll back the rest."""
        ...

    def admit(self, rows: list[Row]) -> None:
        """New rows join after the existing ones (their prompt and first token are in row.tokens)."""
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


class NoProposer:
    """Plain autoregressive decoding: nothing to propose, nothing to keep."""

    def propose(self, rows: list[Row], ks: list[int], warp: Warp, u: torch.Tensor) -> Proposal:
        return Proposal([[] for _ in rows])

    def commit(self, num_accepted: list[int]) -> None:
        pass

    def admit(self, rows: list[Row]) -> None:
        pass

    def select(self, keep: torch.Tensor) -> None:
        pass

    def extend(self, other: Proposer) -> None:
        pass

    def drain_forwards(self) -> list[Forward]:
        return []
