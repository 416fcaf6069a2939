"""Adaptive speculation: choose K per step (K = 0: a plain step) to maximise expected tokens/s.

expected tokens per row and step, for K candidates:
    E(K) = 1 + sum_{j < K} avail_j * prod_{i <= j} a_i
where a_i is the moving-average acceptance of position i given positions before it were accepted,
and avail_j the share of rows that had a j-th candidate (prompt lookup may find fewer than K).
Step cost t(B, K) is a line a + c * K fitted, per batch-size bucket, to moving averages of measured
step seconds (K = 0 and K = max are measured first; the neighbours of the current choice are
re-measured now and then, so the line follows the machine). Choice: argmax_K E(K) / t(B, K), and
K > 0 only when it beats a plain step by a margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from decoding.stats import StepStats


def bucket(batch_size: int) -> int:
    """Batch sizes grouped by powers of two: 1, 2, 3-4, 5-8, ..."""
    return 1 << max(batch_size - 1, 0).bit_length()


@dataclass
class KController:
    k_max: int
    alpha: float = 0.2  # weight of the newest observation in the moving averages
    explore_every: int = 32  # steps between re-measuring a neighbour of the current choice
    margin: float = 0.05  # K > 0 must promise this much more throughput than a plain step
    accept: list[float] = field(default_factory=list)  # [k_max] conditional acceptance per position
    avail: list[float] = field(default_factory=list)  # [k_max] share of rows with a j-th candidate
    cost: dict[tuple[int, int], float] = field(default_factory=dict)  # (bucket, K) -> seconds per step
    steps: int = 0
    last: int = 0

    def __post_init__(self) -> None:
        self.accept = self.accept or [0.5] * self.k_max  # a neutral prior until measured
        self.avail = self.avail or [1.0] * self.k_max

    def expected_tokens(self, k: int) -> float:
        total, p = 1.0, 1.0
        for j in range(k):
            p *= self.accept[j]
            total += self.avail[j] * p
        return total

    def step_cost(self, b: int, k: int) -> float | None:
        """Seconds per step at bucket b and K: a line a + c * K fitted to the Ks measured there
        (a line, not the raw table: one noisy sample of one K must not decide)."""
        pts = [(kk, t) for (bb, kk), t in self.cost.items() if bb == b]
        if len(pts) < 2:
            return dict(pts).get(k)
        n = len(pts)
        mk, mt = sum(x for x, _ in pts) / n, sum(t for _, t in pts) / n
        var = sum((x - mk) ** 2 for x, _ in pts)
        slope = max(sum((x - mk) * (t - mt) for x, t in pts) / var, 0.0) if var else 0.0
        return max(mt + slope * (k - mk), 1e-9)

    def choose(self, batch_size: int) -> int:
        b = bucket(batch_size)
        self.steps += 1
        for k in (0, self.k_max):  # two points give the cost line at this batch size
            if (b, k) not in self.cost:
                self.last = k
                return k
        rates = {k: self.expected_tokens(k) / self.step_cost(b, k) for k in range(self.k_max + 1)}
        best = max(rates, key=rates.get)
        if rates[best] < (1 + self.margin) * rates[0]:
            best = 0  # speculate only for a clear gain: estimates are noisy, a plain step never loses
        # keep the line fresh around the choice; while plain steps are chosen, look more often,
        # since acceptance is only measured when something is proposed (text changes: code turns
        # repetitive, then the draft agrees far more than it did after the prompt)
        every = self.explore_every // 4 if best == 0 else self.explore_every
        if self.steps % every == 0:
            best = min(self.k_max, best + 2) if best == 0 or (self.steps // every) % 2 else best - 1
        self.last = best
        return best

    def observe(self, stats: StepStats) -> None:
        """Update from one decode step that ran with K = stats.k."""
        key = (bucket(stats.batch_size), stats.k)
        seconds = stats.propose_s + stats.verify_s
        old = self.cost.get(key)
        self.cost[key] = seconds if old is None else (1 - self.alpha) * old + self.alpha * seconds
        for j in range(min(stats.k, self.k_max)):
            reached = stats.reached_per_position[j] if j < len(stats.reached_per_position) else 0
            if reached:
                a = stats.accepted_per_position[j] / reached
                self.accept[j] = (1 - self.alpha) * self.accept[j] + self.alpha * a
            if stats.batch_size:
                v = stats.drafted_per_position[j] / stats.batch_size
                self.avail[j] = (1 - self.alpha) * self.avail[j] + self.alpha * v
