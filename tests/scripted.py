"""Scripted K policies, to drive the engine through exact speculation patterns."""

from __future__ import annotations

from specserve.decoding.stats import StepStats


class Always:
    """Speculates at the most K the rows allow (or at `k`, if less) every step."""

    def __init__(self, k: int | None = None) -> None:
        self.k, self.seen = k, []  # seen: the StepStats of every step it chose K for

    def choose(self, method: str, batch_size: int, k_max: int, sampled: int = 0) -> int:
        return k_max if self.k is None else min(self.k, k_max)

    def observe(self, stats: StepStats, seconds: float, sampled: list[bool] | None = None) -> None:
        self.seen.append(stats)


class Cycle(Always):
    """Plays a fixed K sequence (plain stretches between speculative steps of every depth)."""

    script = (0, 0, 3, 0, 0, 0, 0, 2, 4, 0, 1, 0, 0, 0, 4)

    def __init__(self, script: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.script, self.steps = script or self.script, 0

    def choose(self, method: str, batch_size: int, k_max: int, sampled: int = 0) -> int:
        self.steps += 1
        return min(self.script[(self.steps - 1) % len(self.script)], k_max)


def spec_step(k: int, accepted: int, batch: int = 1, seconds: float = 0.014) -> StepStats:
    """A speculative step of `batch` rows whose first `accepted` candidates were all accepted."""
    stats = StepStats("draft", "decode", batch, k=k, verify_s=seconds)
    stats.drafted_per_position = [batch] * k
    stats.reached_per_position = [batch if j <= accepted else 0 for j in range(k)]
    stats.accepted_per_position = [batch if j < accepted else 0 for j in range(k)]
    stats.accepted_per_row = [accepted] * batch
    stats.emitted_tokens = batch * (1 + accepted)
    return stats
