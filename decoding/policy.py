"""How `auto` chooses K, per method and batch-size bucket b. The whole rule is here.

K(method, b) is the K in 0..k_max with the most tokens per second, E(K) / t(b, K), and 0 unless it
beats a plain step by MARGIN. E(K) = 1 + first * (1 + then + ... + then^(K-1)): `first` the share
of rows that emit candidate 0, `then` the share of later candidates emitted when offered after an
emitted one, one ratio for every depth (moving averages per method and kind of row, greedy or
sampled, weighed by the step's rows of each kind: sampled rows accept far less, and one average
for both kept a greedy request plain after a sampled one; PRIOR before any is measured). t(b, K)
is a real decode step of b scratch rows at K, timed at the method's first step at b
(`decoding/calibrate.py`), plus what steady real steps took beyond the timing, plain and
speculative apart (not a step whose proposer caught up on what plain steps piled up,
`StepStats.sync_s`: the price of switching, which charged to K would keep a method plain; nor a
thread tuner's trial). Where the rule's K is below PROBE_K, one step in PROBE_EVERY * b runs at
PROBE_K, so acceptance stays measured (from 0 only if perfect acceptance would pay): a probe
measures its b rows at about b times a row's price. A user's schedule
(`--speculation-schedule`, as vLLM's and TensorRT-LLM's batch-size schedules) replaces the rule
for the methods it names.
docs/batch-tradeoffs.md has the measurements.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from specserve.decoding.stats import StepStats

log = logging.getLogger(__name__)

MARGIN = 0.1  # K > 0 must promise this much more tokens/s than a plain step
ALPHA = 0.01  # weight of a row's outcome in the acceptance averages, of a step in the real costs
# (slow: at one row the averages span a few requests, and follow the mix, not each request)
CLIP = 1.5  # a step counts at most CLIP x its expected seconds (preemptions)
PRIOR = 0.8  # `first` and `then` before any step is measured (optimistic: it speculates and measures)
PROBE_EVERY = 32  # steps of a (method, bucket b) between probes where K < PROBE_K, times b
PROBE_K = 2  # the least K that measures `then`

Timer = Callable[[str, int, int], list[float]]  # (method, rows, k_max) -> [k_max + 1] step seconds
Schedule = dict[str, dict[int, int]]  # method ("*": any) -> {smallest batch size: K}, sorted
# (`--speculation-schedule`, validated in server/settings.py)


def bucket(batch_size: int) -> int:
    """Batch sizes grouped by powers of two: 1, 2, 3-4, 5-8, ... (shared with the thread tuner)."""
    return 1 << max(batch_size - 1, 0).bit_length()


@dataclass
class Acceptance:
    """Acceptance of one method and kind of row, as two moving averages: `first`, the share of rows
    that emit candidate 0, and `then`, the share of later candidates emitted of those offered after
    an emitted one. Every position past the first shares `then`, which every step of K >= 2
    measures: a deep position that steps seldom offer keeps no stale value of its own."""

    first: float = PRIOR
    then: float = PRIOR

    def expected(self, k: int) -> float:
        """E(K) = 1 + first * (1 + then + ... + then^(K-1))."""
        return 1.0 + self.first * sum(self.then**j for j in range(k))

    def add(self, accepted: list[int], k: int) -> None:
        """A step's rows (of this kind): the candidates each accepted, of k offered at most."""
        self.first += _weight(len(accepted)) * (sum(a > 0 for a in accepted) / len(accepted) - self.first)
        offered = sum(min(a, k - 1) for a in accepted if a)  # candidates 1.. met after an emitted one
        if offered:
            self.then += _weight(offered) * (sum(a - 1 for a in accepted if a) / offered - self.then)


def _weight(n: int) -> float:
    """The weight of n outcomes in a moving average, ALPHA each."""
    return 1.0 - (1.0 - ALPHA) ** n


@dataclass
class SchedulePolicy:
    """K for the adaptive rows of each step (`choose`), and what the step gave (`observe`)."""

    timer: Timer  # measures t(b, K) for a method (the engine's scratch decode steps)
    schedule: Schedule = field(default_factory=dict)
    costs: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # (method, b) -> t(b, K)
    accept: dict[tuple[str, bool], Acceptance] = field(default_factory=dict)  # (method, sampled)
    steps: dict[tuple[str, int], int] = field(default_factory=dict)  # steps chosen per (method, b)
    real: dict[tuple[str, int, bool], float] = field(default_factory=dict)  # (method, b, K > 0) ->
    # real step seconds less the timed ones, moving average

    def choose(self, method: str, batch_size: int, k_max: int, sampled: int = 0) -> int:
        """K for the next step of `batch_size` rows of `method` (`sampled` of them not greedy), at
        most k_max."""
        table = self.schedule.get(method, self.schedule.get("*"))
        if table is not None:  # the K of its largest batch size at or below this one
            return min(table[max(b for b in table if b <= batch_size)], k_max)
        b = bucket(batch_size)
        share = sampled / batch_size
        k = self.best(method, b, k_max, share)
        n = self.steps[method, b] = self.steps.get((method, b), 0) + 1
        if k >= PROBE_K or n % (PROBE_EVERY * b):
            return k
        return min(PROBE_K, k_max) if k or self.best(method, b, k_max, share, perfect=True) else 0

    def best(self, method: str, b: int, k_max: int, share: float = 0.0, perfect: bool = False) -> int:
        """The rule's K at bucket b with `share` of the rows sampled (perfect: were every candidate
        accepted)."""
        t = self.step_costs(method, b, k_max)
        greedy, sampled = (self.accept.setdefault((method, s), Acceptance()) for s in (False, True))
        cost = [t[k] + self.real.get((method, b, k > 0), 0.0) for k in range(k_max + 1)]
        tokens = [1 + k if perfect else (1 - share) * greedy.expected(k) + share * sampled.expected(k)
                  for k in range(k_max + 1)]  # fmt: skip
        rate = [tokens[k] / max(cost[k], 1e-9) for k in range(k_max + 1)]
        k = max(range(k_max + 1), key=rate.__getitem__)
        return k if rate[k] >= (1 + MARGIN) * rate[0] else 0

    def step_costs(self, method: str, b: int, k_max: int) -> list[float]:
        """t(b, K) for K = 0..k_max as timed (the timer runs the first time it is asked)."""
        t = self.costs.get((method, b))
        if t is None or len(t) <= k_max:
            t = self.costs[method, b] = self.timer(method, b, k_max)
            log.info("step costs of %s at %d rows, K = 0..%d: %s ms", method, b, k_max,
                     ", ".join(f"{x * 1e3:.2f}" for x in t))  # fmt: skip
        return t

    def observe(self, stats: StepStats, seconds: float, sampled: list[bool] | None = None) -> None:
        """A decode step that ran with K = stats.k for the adaptive rows, in `seconds` of wall time;
        sampled: which of its rows were not greedy (None: none)."""
        if not stats.batch_size:
            return
        kinds = sampled or [False] * stats.batch_size
        for kind in (False, True) if stats.k else ():
            accepted = [a for a, s in zip(stats.accepted_per_row, kinds, strict=True) if s == kind]
            if accepted:
                self.accept.setdefault((stats.method, kind), Acceptance()).add(accepted, stats.k)
        b = bucket(stats.batch_size)
        t = self.costs.get((stats.method, b))
        if t is None or stats.k >= len(t) or stats.compiled or stats.trial or stats.sync_s:
            return  # not a steady step: a compile, a thread trial, or a proposer catching up
        key = (stats.method, b, stats.k > 0)
        now = self.real.get(key, 0.0)  # the timing's word until real steps say otherwise
        timed = t[stats.k]
        self.real[key] = now + ALPHA * (min(seconds, CLIP * (timed + now)) - timed - now)
