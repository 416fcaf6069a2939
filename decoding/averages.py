"""Moving averages the adaptive controller keeps: step seconds, and realized tokens per second."""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass
class RequestPrior:
    """Acceptance across requests, where each request's own counts most (batch 1). The suite's
    prompts range from 60 to 350 tok/s under one draft: a request's acceptance says little about
    the next one's, so the controller's estimates must not carry a bad request's "plain" into a
    good one (only trials would learn otherwise). When a new request starts alone, the estimates
    it left are folded into this prior (`weight` per request) and it starts from the prior, as
    worth `rows` row outcomes: after as many of its own, its own weigh half."""

    accept: list[float] = field(default_factory=list)  # [k_max] long-run conditional acceptance
    tail: float = 0.0
    weight: float = 0.25
    rows: float = 8.0

    def restart(self, accept: list[float], tail: float, rows_seen: dict[str, float]) -> float:
        """Fold the estimates (in place) into the prior, restart them from it; return the tail."""
        if not self.accept:
            self.accept, self.tail = list(accept), tail
        self.accept = [p + self.weight * (a - p) for p, a in zip(self.accept, accept, strict=True)]
        self.tail += self.weight * (tail - self.tail)
        accept[:] = self.accept
        for name in [f"accept{j}" for j in range(len(accept))] + ["tail"]:
            rows_seen[name] = min(rows_seen.get(name, 0.0), self.rows)
        return self.tail
