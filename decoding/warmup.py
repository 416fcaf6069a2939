"""Start-up warm-up of compiled decode steps (`--compile`).

Compiles the graphs a lone request needs (plain steps, and each method's speculative steps) before
the first request, so no request waits for a compile. Under `auto` the same requests also time
those forwards compiled against eager (decoding/compiled.py). Graphs for other shapes (batches of
several rows) compile when first needed, logged, and inductor keeps every graph on disk, so a
restart finds them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from specserve.decoding.compiled import COMPILE_MODES
from specserve.decoding.engine import Engine
from specserve.decoding.params import SamplingParams, SpecParams

log = logging.getLogger(__name__)

PROMPT_TOKENS = 32  # warm-up prompts: long enough that a draft and prompt lookup have context
WARM_TOKENS = 24  # tokens generated per warm-up request: enough forwards to judge them under auto


@dataclass
class WarmUp:
    mode: str
    compiled: bool  # whether compiled forwards stay in use (a model that failed to compile: no)
    seconds: float = 0.0
    graphs: int = 0
    verdicts: dict[str, str] = field(default_factory=dict)  # "role rows-bucket tokens" -> compiled/eager


def warm_up(engine: Engine, mode: str, methods: list[str], k: int = 4) -> WarmUp:
    """Compile (and under `auto`, start judging) the engine's compiled steps; returns what it found."""
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
    report.seconds = time.perf_counter() - t0
    report.graphs = sum(len(c.graphs) for c in engine.compiled.values())
    for c in engine.compiled.values():
        for (bucket, one, hidden), j in c.judged.items():
            if j.compiled is not None:
                rows = f"{2 ** (bucket - 1)}-{2**bucket - 1} rows"
                tokens = "1 token" if one else "tokens > 1"
                name = f"{c.role} {rows}, {tokens} a row{' + hidden' if hidden else ''}"
                report.verdicts[name] = "compiled" if j.compiled else "eager"
    found = "".join(f"; {k}: {v}" for k, v in report.verdicts.items())
    log.info("warm-up: %d compiled graphs in %.1f s%s", report.graphs, report.seconds,
             found if report.compiled else "; running eagerly")  # fmt: skip
    return report
