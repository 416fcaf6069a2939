"""Step costs for the K policy (decoding/policy.py): real decode steps on scratch rows, timed.

A scratch sub-batch of `rows` rows (a repeating prompt; prompt lookup's misses filled from it, so
every method offers all K candidates) runs one unmeasured pass over K = 0..k_max
(graphs compile, caches settle), then REPS timed passes, the Ks interleaved; a K's cost is its
fastest step that compiled nothing (the least disturbed by other work on the machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from specserve.decoding.batch import SubBatch
from specserve.decoding.params import AUTO_MAX_TOKENS, SamplingParams, SpecParams
from specserve.decoding.policy import bucket
from specserve.decoding.proposer import Proposal
from specserve.decoding.row import Row
from specserve.decoding.step import decode_step, prefill

if TYPE_CHECKING:
    from specserve.decoding.engine import Engine

REPS = 3
EXTRA = 3  # more passes for a K whose every timed step compiled a graph
PROMPT_TOKENS = 128  # cached tokens a row holds while timed (at most a third of the context)
PERIOD = 16  # the scratch prompt repeats this many random tokens


@torch.no_grad()
def time_steps(
    target: PreTrainedModel,
    batch: SubBatch,
    rows: int,
    k_max: int,
    plan: Callable[[int], object] = lambda k: None,
    compiles: Callable[[], int] = lambda: 0,
) -> list[float]:
    """[k_max + 1] seconds per decode step of `rows` scratch rows in `batch` (empty, its method's
    proposer) at K = 0..k_max; plan(K) runs before each step (the engine sets its threads);
    compiles() counts graphs compiled so far: a step that compiled one is timed again."""
    ctx = int(target.config.max_position_embeddings)
    vocab = target.get_output_embeddings().weight.shape[0]
    n = min(PROMPT_TOKENS, ctx // 3)
    period = torch.randint(2, vocab, (PERIOD,), generator=torch.Generator().manual_seed(0)).tolist()
    prompt = (period * (n // PERIOD + 1))[:n]
    sampling = SamplingParams(max_new_tokens=ctx - n, ignore_eos=True)
    spec = SpecParams(batch.method, max(k_max, 1), adaptive=True)
    new = [Row.start(f"calibrate-{i}", prompt, sampling, spec, (), max_len=ctx) for i in range(rows)]
    prefill(target, batch, new, _drop)
    if batch.method == "ngram":  # fill what lookup misses up to K (lookup itself still runs, timed):
        propose = batch.proposer.propose  # a scratch row's output seldom repeats its prompt
        batch.proposer.propose = lambda rows, ks, *a: _filled(propose(rows, ks, *a), ks, period)
    best = [float("inf")] * (k_max + 1)
    for rep in range(REPS + 1 + EXTRA):
        todo = range(k_max + 1) if rep <= REPS else [k for k, t in enumerate(best) if t == float("inf")]
        for k in todo:
            plan(k)
            before, t0 = compiles(), time.perf_counter()
            decode_step(target, batch, _drop, k)
            seconds = time.perf_counter() - t0
            if rep and (compiles() == before or rep == REPS + EXTRA):  # a compile's time is not the step's
                best[k] = min(best[k], seconds)
    return best


def step_costs(engine: Engine, method: str, rows: int, k_max: int) -> list[float]:
    """The policy's timer: `rows` scratch rows of `method` on the engine's models, each step's
    threads planned as a real step's (call on the thread that will step)."""
    batch, plan = engine.new_batch(method, scratch=True), lambda k: engine.on_plan("decode", method, k, rows)
    return time_steps(engine.target, batch, rows, k_max, plan, engine.compiles)


def calibrate(
    engine: Engine, methods: tuple[str, ...] | None = None, buckets: tuple[int, ...] | None = None
) -> None:
    """Measure the policy's step costs now (else at a method's first step at each bucket), for
    `buckets` (default: every batch-size bucket up to the engine's max_batch_size; methods a
    schedule names: none)."""
    for method in methods or engine.methods:
        if not needs_costs(engine, method):
            continue
        for b in buckets or all_buckets(engine):
            engine.policy.step_costs(method, b, k_max(engine, method))


def needs_costs(engine: Engine, method: str) -> bool:
    """Whether `auto` times this method's steps (not plain decoding, nor a method on a schedule)."""
    schedule = engine.policy.schedule
    return method != "none" and method not in schedule and "*" not in schedule


def k_max(engine: Engine, method: str) -> int:
    """The largest K `auto` weighs for a method (Medusa: its tree's depth)."""
    return AUTO_MAX_TOKENS if method != "medusa" else min(AUTO_MAX_TOKENS, engine.medusa[1].max_depth)


def all_buckets(engine: Engine) -> tuple[int, ...]:
    return tuple(sorted({bucket(n) for n in range(1, engine.max_batch_size + 1)}))


def _drop(row: Row, tokens: list[int]) -> None:
    pass


def _filled(prop: Proposal, ks: list[int], filler: list[int]) -> Proposal:
    prop.tokens = [c + filler[: k - len(c)] for c, k in zip(prop.tokens, ks, strict=True)]
    return prop
