"""How many torch CPU threads the engine uses, chosen per step by measurement.

More threads pay only where a step is compute-bound. A small model at batch 1 is bound by
per-op overhead and memory, and extra OpenMP threads add a barrier to every op; at batch 32 the
matmuls dominate and split well. On the bundled suite on 2 cores, one thread is as fast or
faster up to batch 4 and two are 1.12x / 1.20x / 1.26x faster at batch 8 / 16 / 32 (in-process),
while over HTTP the second core is also the event loop's and the clients'. No fixed rule holds
across models and machines, so each batch-size bucket (1, 2-3, 4-7, 8-15, ...) times its candidate
thread counts on interleaved decode steps and keeps the fastest per token fed, re-checking now
and then as batches and caches change. Only the engine thread calls `choose`: torch's OpenMP
thread count is per calling thread.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass, field

import torch

from decoding.stats import StepStats

log = logging.getLogger(__name__)


def thread_candidates(threads: int, device: str, cores: int | None = None) -> tuple[int, ...]:
    """--threads N: (N,), fixed. On CPU by default: 1, the powers of two below the core count,
    all cores but one and all cores. Elsewhere: () (torch's default; the GPU does the work)."""
    if threads:
        return (threads,)
    if device != "cpu":
        return ()
    n = cores or os.cpu_count() or 1
    return tuple(sorted({1, n - 1, n, *(2**i for i in range(n.bit_length()) if 2**i < n)} - {0}))


@dataclass
class _Bucket:
    samples: dict[tuple, dict[int, list[float]]]  # step kind -> threads -> seconds per token fed
    choice: int | None = None
    steps: int = 0  # steps since the choice
    probes: int = 0  # timed steps since the last choice
    kind: tuple = ()  # the kind of this bucket's latest step: the next one is likely the same


@dataclass
class ThreadTuner:
    """Per batch-size bucket: `trials` interleaved decode steps per candidate, then the fastest
    (median seconds per token fed) until `recheck` steps later. Steps are compared only with
    steps of the same kind (each sub-batch's method and K: a draft step feeds cheap draft tokens,
    a plain one none), unless kinds change so often that no kind fills its trials; then all.
    A single candidate is fixed; none leaves torch's threads alone (GPU)."""

    candidates: tuple[int, ...]
    trials: int = 4
    recheck: int = 2000
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    current: int = 0  # threads set on the engine thread (0: not set yet)
    _step: tuple[int, int | None] = (0, None)  # (bucket, threads if this step is a trial)

    def choose(self, rows: int) -> int:
        """Threads for a step over `rows` rows; sets them (call on the engine thread)."""
        if not self.candidates:
            return torch.get_num_threads()
        key = max(rows, 1).bit_length()
        b = self.buckets.setdefault(key, _Bucket({}))
        probe = None
        if len(self.candidates) == 1:
            threads = self.candidates[0]
        elif b.choice is not None and b.steps < self.recheck:
            b.steps += 1
            threads = b.choice
        else:  # the least-measured candidate for the kind of step expected: trials interleave
            seen = b.samples.get(b.kind, {})
            threads = probe = min(self.candidates, key=lambda c: len(seen.get(c, ())))
        self._step = (key, probe)
        if threads != self.current:
            torch.set_num_threads(threads)
            self.current = threads
        return threads

    def observe(self, seconds: float, stats: list[StepStats]) -> None:
        """The step just run took `seconds`; `stats` are its sub-batches' StepStats. A step that
        ran a prefill does not count: its work is of another kind."""
        key, threads = self._step
        if not stats or key not in self.buckets or any(s.phase == "prefill" for s in stats):
            return
        b = self.buckets[key]
        b.kind = tuple(sorted((s.method, s.k) for s in stats))
        tokens = sum(sum(f.tokens) for s in stats for f in s.forwards)
        if threads is None or tokens <= 0:
            return
        b.samples.setdefault(b.kind, {c: [] for c in self.candidates})[threads].append(seconds / tokens)
        b.probes += 1
        full = [k for k, per in b.samples.items() if min(len(x) for x in per.values()) >= self.trials]
        if full:
            per = b.samples[full[0]]
        elif b.probes >= 4 * self.trials * len(self.candidates):  # kinds keep changing: pool them
            per = {c: [x for k in b.samples.values() for x in k[c]] for c in self.candidates}
            if not all(per.values()):
                return
        else:
            return
        best = min(self.candidates, key=lambda c: statistics.median(per[c]))
        if best != b.choice:
            log.info(
                "engine threads for batches of %d-%d rows: %d (%s)", 2 ** (key - 1), 2**key - 1, best,
                ", ".join(f"{c}: {statistics.median(x) * 1e6:.0f} us/token" for c, x in per.items()),
            )  # fmt: skip
        b.choice, b.steps, b.probes, b.samples = best, 0, 0, {}
