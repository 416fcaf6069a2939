"""What a decode step costs, as adaptive speculation (decoding/adaptive.py) measures it.

Seconds per step by batch-size bucket and K: a plain step's own moving average, and for K >= 1 a
line in K through the Ks measured at that bucket (a line, not the raw table: one noisy sample of
one K must not decide). Every K also pays the step's untimed overhead (accept, commit, the
tokens' hand-off, metrics), which fewer, longer steps pay less often.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specserve.decoding.averages import Average


@dataclass
class StepCosts:
    alpha: float = 0.1  # weight of the newest step time in its moving average
    min_samples: int = 4  # a K timed fewer times leaves the line once two Ks have been timed more
    table: dict[tuple[int, int], Average] = field(default_factory=dict)  # (bucket, K) -> step seconds
    overhead: float = 0.0  # moving average of a step's untimed seconds

    def add(self, b: int, k: int, seconds: float) -> None:
        """One step's timed seconds (propose, less the draft's catching up, and verify)."""
        self.table.setdefault((b, k), Average()).add(seconds, self.alpha)

    def add_overhead(self, seconds: float) -> None:
        """A decode step's wall time beyond its timed propose and verify."""
        self.overhead += 0.1 * (max(seconds, 0.0) - self.overhead)

    def steps(self, b: int, speculative: bool) -> int:
        """Steps timed at bucket b: plain ones, or speculative ones of any K."""
        return sum(c.n for (bb, k), c in self.table.items() if bb == b and (k > 0) == speculative)

    def __call__(self, b: int, k: int) -> float | None:
        """Seconds per step at bucket b and K, overhead included; None until measured there."""
        if k == 0:
            c = self.table.get((b, 0))
            return max(c.value + self.overhead, 1e-9) if c else None
        line = self.line(b)
        return self._on(line, k) if line is not None else None

    def upto(self, b: int, k_max: int) -> list[float]:
        """[k_max + 1] seconds per step of K = 0..k_max at bucket b (both kinds measured there),
        the line fitted once."""
        line = self.line(b)
        return [self(b, 0)] + [self._on(line, k) for k in range(1, k_max + 1)]

    def _on(self, line: tuple[float, float, float], k: int) -> float:
        mk, mt, slope = line
        return max(mt + slope * (k - mk) + self.overhead, 1e-9)

    def line(self, b: int) -> tuple[float, float, float] | None:
        """The line for K >= 1 at bucket b: (mean K, mean seconds, seconds per K). Each K weighs
        its samples up to a moving average's worth, and Ks timed under `min_samples` times are left
        out once two are not (one slow step of a rarely run K must not tilt the line). With one K
        measured, the slope is its cost over a plain step's, per candidate."""
        pts = [(k, c.value, min(c.n, 1 / self.alpha)) for (bb, k), c in self.table.items() if bb == b and k]
        if not pts:
            return None
        if len(sure := [p for p in pts if p[2] >= self.min_samples]) >= 2:
            pts = sure
        w = sum(n for *_, n in pts)
        mk, mt = sum(x * n for x, _, n in pts) / w, sum(t * n for _, t, n in pts) / w
        if len(pts) == 1:
            plain = self(b, 0)
            return mk, mt, max((mt + self.overhead - plain) / mk, 0.0) if plain is not None else 0.0
        var = sum(n * (x - mk) ** 2 for x, _, n in pts)
        return mk, mt, max(sum(n * (x - mk) * (t - mt) for x, t, n in pts) / var, 0.0)
