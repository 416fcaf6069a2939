"""How many torch CPU threads the engine uses, chosen per step by measurement.

More threads pay only where a step is compute-bound: a small model at batch 1 is bound by per-op
overhead, and each extra OpenMP thread adds a barrier to every op; large batches and verifies of
K + 1 tokens split well. Over HTTP the other cores are also the event loop's and the clients'. So
each kind of step at each batch-size bucket (the K policy's) times its candidate thread counts on
interleaved steps and keeps the fastest per token fed, re-checked now and then (measurements in
docs/batch-tradeoffs.md). Only the engine thread calls `plan`: torch's thread count is per thread.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass, field

import torch

from specserve.decoding.policy import bucket
from specserve.decoding.stats import StepStats

log = logging.getLogger(__name__)

PLAIN = "plain"  # the method of every K = 0 step's arm (what the proposer adds is not run)


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
class _Arm:
    samples: dict[int, list[tuple[int, float]]]  # threads -> (tokens fed, bucketed; seconds per
    # token fed) of each trial since the last check
    choice: int | None = None
    steps: int = 0  # steps since the choice


@dataclass
class ThreadTuner:
    """Per kind of step (prefill or decode; method and K, or plain: every method at K = 0 runs
    the same target forward, so they share one choice) and batch-size bucket: interleaved trial
    steps until every candidate has `trials` that fed as many tokens (to a power of two: prompt
    lookup's steps at one K feed 1 to K + 1 tokens a row, and a token fed costs less in a wider
    step), then the fastest of those (median seconds per token fed) until `recheck` steps later.
    `plan` runs before each step (the engine's on_plan), `observe` after (its on_step). A single
    candidate is fixed; none leaves torch's threads alone (a GPU)."""

    candidates: tuple[int, ...]
    trials: int = 4
    recheck: int = 2000
    arms: dict[tuple, _Arm] = field(default_factory=dict)
    current: int = 0  # threads set on the engine thread (0: not set yet)
    _trial: tuple[tuple, int] | None = None  # (arm, threads) of a step being timed

    def plan(self, phase: str, method: str, k: int, rows: int) -> bool:
        """Sets the threads for the step about to run (call on the engine thread). Returns whether
        the step is a trial: its time a thread count's sample, not what such a step costs."""
        if not self.candidates:
            return False
        key = (phase, method if k else PLAIN, k, bucket(rows))
        arm = self.arms.get(key)
        if arm is None:  # (not setdefault: that would build an arm on every step)
            arm = self.arms[key] = _Arm({c: [] for c in self.candidates})
        self._trial = None
        if len(self.candidates) == 1:
            threads = self.candidates[0]
        elif arm.choice is not None and arm.steps < self.recheck:
            arm.steps += 1
            threads = arm.choice
        else:  # the least-measured candidate: the trials interleave
            threads = min(self.candidates, key=lambda c: len(arm.samples[c]))
            self._trial = (key, threads)
        if threads != self.current:
            torch.set_num_threads(threads)
            self.current = threads
        return self._trial is not None

    def observe(self, stats: StepStats) -> None:
        """The step just planned ran: its time per token fed, if it was a trial."""
        if self._trial is None:
            return
        (key, threads), self._trial = self._trial, None
        if stats.compiled:  # its time was a compile's: the trial is run again
            return
        tokens = sum(sum(f.tokens) for f in stats.forwards)
        seconds = stats.prefill_s + stats.propose_s + stats.verify_s
        if tokens <= 0 or seconds <= 0:
            return
        arm, fed = self.arms[key], bucket(tokens)
        arm.samples[threads].append((fed, seconds / tokens))
        alike = {c: [t for n, t in x if n == fed] for c, x in arm.samples.items()}
        if min(len(x) for x in alike.values()) < self.trials:
            return
        median = {c: statistics.median(x) for c, x in alike.items()}
        best = min(self.candidates, key=median.__getitem__)
        if best != arm.choice:
            log.info("engine threads for %s %s K=%d at %d rows (bucket): %d (%s us a token fed)", *key,
                     best, ", ".join(f"{c}: {t * 1e6:.0f}" for c, t in median.items()))  # fmt: skip
        arm.choice, arm.steps = best, 0
        arm.samples = {c: [] for c in self.candidates}
