"""Controllers with scripted choices, to drive the engine through exact speculation patterns."""

from __future__ import annotations

from specserve.decoding.adaptive import KController
from specserve.decoding.stats import StepStats


class Always(KController):
    """Speculates at k_max every step; clips by lockstep group as the real controller does."""

    lock_groups = True

    def choose(self, batch_size: int, sizes: list[int] | None = None, request: object = None) -> int:
        self.sizes = sizes if self.lock_groups and sizes and max(sizes) > 1 else None
        self.last = self.k_max
        return self.last


class Unclipped(Always):
    """Always, but never clips: rows in lockstep drift apart as their acceptance differs."""

    lock_groups = False


class Cycle(Always):
    """Plays a fixed K sequence (plain stretches between speculative steps of every depth)."""

    script = (0, 0, 3, 0, 0, 0, 0, 2, 4, 0, 1, 0, 0, 0, 4)

    def choose(self, batch_size: int, sizes: list[int] | None = None, request: object = None) -> int:
        super().choose(batch_size, sizes)
        self.last = self.script[self.steps % len(self.script)]
        self.steps += 1
        return self.last


def spec_step(k: int, accepted: int, batch: int = 1, seconds: float = 0.014) -> StepStats:
    """A speculative step of `batch` rows whose first `accepted` candidates were all accepted."""
    stats = StepStats("draft", "decode", batch, k=k, verify_s=seconds)
    stats.drafted_per_position = [batch] * k
    stats.reached_per_position = [batch if j <= accepted else 0 for j in range(k)]
    stats.accepted_per_position = [batch if j < accepted else 0 for j in range(k)]
    stats.emitted_tokens = batch * (1 + accepted)
    return stats
