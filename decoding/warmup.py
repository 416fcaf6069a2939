"""Start-up warm-up of compiled decode steps (`--compile`).

Before the first request, each model the methods use runs the forwards a lone request runs — one
token a row (plain steps, a draft's proposals) and several (verification, a draft catching up;
with hidden states where Medusa reads them) — on a scratch cache, under each thread count the
engine may step with (inductor builds kernels for one count; dynamo guards on it), so their graphs
are compiled and, under `auto`, judged against eager (decoding/compiled.py). Graphs for batches
of several rows compile when first needed (logged; the thread tuner and adaptive K ignore that
step's time), as do the graphs dynamo makes once a cache outgrows 64 columns (it keeps the first
column count static): compiling all of them here measured 68 s of warm-up with a warm cache,
223 s cold, against a start-up target of 15 s and 60 s.
Inductor keeps every graph on disk, so a restart finds them (dynamo still traces each one again).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from specserve.decoding.compiled import COMPILE_MODES, TRIALS, kind_name
from specserve.decoding.engine import Engine
from specserve.decoding.kv import KVState

log = logging.getLogger(__name__)

PROMPT_TOKENS = 32  # the scratch cache's prefill
WIDE = 4  # tokens a row of the "several tokens" forwards (any T > 1 shares their graph)


@dataclass
class WarmUp:
    mode: str
    compiled: bool  # whether compiled forwards stay in use (a model that failed to compile: no)
    seconds: float = 0.0
    graphs: int = 0
    verdicts: dict[str, str] = field(default_factory=dict)  # "role rows, tokens a row" -> compiled/eager


def warm_up(engine: Engine, mode: str, methods: list[str], threads: tuple[int, ...] = ()) -> WarmUp:
    """Compile (and under `auto`, judge) the lone-request forwards of the models `methods` use,
    under each torch thread count in `threads` the engine may step with (inductor's kernels are
    built for one count, and dynamo guards on it; none: the current count)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "off" or not engine.compiled:
        return WarmUp(mode, compiled=False)
    t0 = time.perf_counter()
    runs = [("target", engine.target, False)]
    if ("medusa" in methods and engine.medusa is not None) or (
        "eagle" in methods and engine.eagle is not None
    ):
        runs.append(("target", engine.target, True))
    if "draft" in methods and "draft" in engine.compiled:
        runs.append(("draft", engine.draft, False))
    if "eagle" in methods and "eagle" in engine.compiled:
        runs.append(("eagle", engine.eagle, True))
    before = torch.get_num_threads()
    for n in threads or (before,):
        torch.set_num_threads(n)
        for role, model, hidden in runs:
            log.info("warm-up: the %s's decode forwards%s, %d threads", role,
                     " with hidden states" if hidden else "", n)  # fmt: skip
            if role == "eagle":
                _forwards(model.decoder, engine.compiled[role], hidden, model.embed)
            else:
                _forwards(model, engine.compiled[role], hidden)
    torch.set_num_threads(before)
    report = WarmUp(mode, compiled=any(c.enabled for c in engine.compiled.values()))
    report.seconds = time.perf_counter() - t0
    report.graphs = sum(len(c.graphs) for c in engine.compiled.values())
    for c in engine.compiled.values():
        for kind, j in c.judged.items():
            if j.compiled is not None:
                report.verdicts[f"{c.role} {kind_name(kind)}"] = "compiled" if j.compiled else "eager"
    found = "".join(f"; {k}: {v}" for k, v in report.verdicts.items())
    log.info("warm-up: %d compiled graphs in %.1f s%s", report.graphs, report.seconds,
             found if report.compiled else "; running eagerly")  # fmt: skip
    return report


@torch.no_grad()
def _forwards(model, compiled, hidden: bool, embed=None) -> None:
    """One row's forwards of one token and of WIDE tokens, enough of each to compile the graph
    and time it both ways; each forward's tokens are rolled back, so the cache stays small.
    embed: an EAGLE head's (tokens, features) -> input embeddings (fed with zero features)."""
    vocab = model.get_output_embeddings().weight.shape[0]
    tokens = torch.randint(0, vocab, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(0)).tolist()
    kv = KVState.empty(model, 1, compiled=compiled)

    def embeds(toks: list[int]) -> torch.Tensor | None:
        if embed is None:
            return None
        ids = torch.tensor([toks], device=kv.mask.device)
        p = next(model.parameters())
        return embed(ids, torch.zeros(1, len(toks), model.config.hidden_size, dtype=p.dtype, device=p.device))

    kv.forward(model, [tokens], logits="last", embeds=embeds(tokens))  # the prefill: eager
    for width in (1, WIDE):
        for _ in range(2 * TRIALS + 1):  # the first compiles; then both ways, TRIALS each
            kv.forward(model, [tokens[:width]], hidden=hidden, embeds=embeds(tokens[:width]))
            kv.rollback(torch.zeros(1, width, dtype=torch.bool, device=kv.mask.device))
