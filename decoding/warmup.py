"""Start-up warm-up of compiled decode steps (`--compile`).

`on` compiles the graphs a lone request needs (plain steps, and the method's speculative steps) before
the first request; `auto` does the same, then times plain decoding at batch 1 compiled and eager
and keeps the faster (a model that fails to compile is eager either way). Graphs for other shapes
(batches of several rows) compile when first needed, logged, and are cached on disk by inductor, so
a restart finds them.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field

import torch

from specserve.decoding.compiled import COMPILE_MODES
from specserve.decoding.engine import Engine
from specserve.decoding.params import SamplingParams, SpecParams

log = logging.getLogger(__name__)

PROMPT_TOKENS = 32  # warm-up prompts: long enough that a draft and prompt lookup have context
WARM_TOKENS = 12  # tokens generated per warm-up request
TIMED_TOKENS = 24  # tokens per timed request under `auto`
TIMED_RUNS = 3  # timed requests per side (compiled, eager), interleaved


@dataclass
class WarmUp:
    mode: str
    compiled: bool  # whether the engine runs compiled steps after the warm-up
    seconds: float = 0.0
    graphs: int = 0
    tokens_per_s: dict[str, float] = field(default_factory=dict)  # "compiled" / "eager", under auto


def warm_up(engine: Engine, mode: str, methods: list[str], k: int = 4) -> WarmUp:
    """Compile (and under `auto`, judge) the engine's compiled steps; returns what it found."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "off" or not engine.compiled:
        return WarmUp(mode, compiled=False)
    t0 = time.perf_counter()
    vocab = engine.target.get_output_embeddings().weight.shape[0]
    prompt = torch.randint(0, vocab, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(0)).tolist()
    sampling = SamplingParams(max_new_tokens=WARM_TOKENS, ignore_eos=True)
    for method in dict.fromkeys(["none", *methods]):  # plain steps first: every method takes some
        if method in engine.methods:
            log.info("warm-up: compiling %s steps", method)
            engine.generate([prompt], sampling, SpecParams(method, k) if method != "none" else SpecParams())
    report = WarmUp(mode, compiled=any(c.enabled for c in engine.compiled.values()))
    if mode == "auto" and report.compiled:
        report.tokens_per_s = _time_plain(engine, prompt)
        report.compiled = report.tokens_per_s["compiled"] > report.tokens_per_s["eager"]
        for c in engine.compiled.values():
            c.enabled = c.enabled and report.compiled
    report.seconds = time.perf_counter() - t0
    report.graphs = sum(len(c.graphs) for c in engine.compiled.values())
    log.info(
        "warm-up: %d compiled graphs in %.1f s; decode steps run %s%s", report.graphs, report.seconds,
        "compiled" if report.compiled else "eagerly",
        "".join(f", {k} {v:.0f} tok/s" for k, v in report.tokens_per_s.items()),
    )  # fmt: skip
    return report


def _time_plain(engine: Engine, prompt: list[int]) -> dict[str, float]:
    """Plain decoding at batch 1, compiled and eager, interleaved: median tokens/s of each."""
    sampling = SamplingParams(max_new_tokens=TIMED_TOKENS, ignore_eos=True)
    enabled = {role: c.enabled for role, c in engine.compiled.items()}
    runs: dict[str, list[float]] = {"compiled": [], "eager": []}
    for _ in range(TIMED_RUNS):
        for side in runs:
            for role, c in engine.compiled.items():
                c.enabled = enabled[role] and side == "compiled"
            t0 = time.perf_counter()
            engine.generate([prompt], sampling, SpecParams())
            runs[side].append(TIMED_TOKENS / (time.perf_counter() - t0))
    for role, c in engine.compiled.items():
        c.enabled = enabled[role]
    return {side: statistics.median(r) for side, r in runs.items()}
