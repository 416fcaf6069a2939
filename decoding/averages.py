"""Moving averages the adaptive controller keeps: step seconds, and realized tokens per second."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Average:
    """Moving average of one (bucket, K)'s step seconds. The first samples are
    averaged evenly, and a sample is clipped to `clip` x the average: a step that happened to grow
    the cache, or that the OS preempted, must not stand for the rest."""

    value: float = 0.0
    n: int = 0
    clip: float = 1.5

    def add(self, x: float, alpha: float) -> None:
        self.n += 1
        if self.n > 2:
            x = min(x, self.clip * self.value)
        self.value += max(alpha, 1.0 / self.n) * (x - self.value)


@dataclass
class RateAverage:
    """Tokens per row per second that steps really gave: moving averages of tokens per row and of
    seconds, divided (the throughput of the steps, not the mean of their ratios), each step weighed
    by its rows like an acceptance outcome. One row at batch 1 is one draw of 1..K+1 tokens: a few
    of them must not decide."""

    tokens: float = 0.0
    seconds: float = 0.0
    rows: float = 0.0  # row-steps seen

    @property
    def value(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def add(
        self,
        tokens_per_row: float,
        seconds: float,
        rows: int,
        alpha: float,
        max_weight: float,
        least: float = 0.0,
    ) -> None:
        """least: the least weight of this step (a stale average: `KController._stale`)."""
        self.rows += rows
        w = max(min(1.0 - (1.0 - alpha) ** rows, max_weight), rows / self.rows, least)
        self.tokens += w * (tokens_per_row - self.tokens)
        self.seconds += w * (seconds - self.seconds)
