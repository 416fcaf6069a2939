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
    samples: dict[int, list[float]]  # threads -> seconds per token fed, since the last check
    choice: int | None = None
    steps: int = 0  # steps since the choice


@dataclass
class ThreadTuner:
    """Per batch-size bucket: `trials` interleaved decode steps per candidate, then the fastest
    (median seconds per token fed) until `recheck` steps later. A single candidate is fixed."""

    candidates: tuple[int, ...]
    trials: int = 4
    recheck: int = 2000
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    current: int = 0  # threads set on the engine thread (0: not set yet)
    _probe: tuple[int, int] | None = None  # (bucket, threads) of a step being measured

    def choose(self, rows: int) -> int:
        """Threads for a step over `rows` rows; sets them (call on the engine thread)."""
        if not self.candidates:
            return torch.get_num_threads()
        key = max(rows, 1).bit_length()
        b = self.buckets.setdefault(key, _Bucket({c: [] for c in self.candidates}))
        self._probe = None
        if len(self.candidates) == 1:
            threads = self.candidates[0]
        elif b.choice is not None and b.steps < self.recheck:
            b.steps += 1
            threads = b.choice
        else:  # the least-measured candidate: the trials interleave
            threads = min(self.candidates, key=lambda c: len(b.samples[c]))
            self._probe = (key, threads)
        if threads != self.current:
            torch.set_num_threads(threads)
            self.current = threads
        return threads

    def observe(self, seconds: float, tokens: int) -> None:
        """The step just run took `seconds` and fed `tokens` tokens to the models. Call with
        tokens=0 for a step that should not count (one with a prefill: its work differs)."""
        if self._probe is None or tokens <= 0:
            return
        key, threads = self._probe
        b = self.buckets[key]
        b.samples[threads].append(seconds / tokens)
        if min(len(s) for s in b.samples.values()) < self.trials:
            return
        best = min(self.candidates, key=lambda c: statistics.median(b.samples[c]))
        if best != b.choice:
            log.info(
                "engine threads for batches of %d-%d rows: %d (%s)", 2 ** (key - 1), 2**key - 1, best,
                ", ".join(f"{c}: {statistics.median(s) * 1e6:.0f} us/token" for c, s in b.samples.items()),
            )  # fmt: skip
        b.choice, b.steps = best, 0
        b.samples = {c: [] for c in self.candidates}
