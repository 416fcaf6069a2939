"""Start-up warm-up of compiled decode steps (`--compile`), and what it leaves for idle time.

Before the first request, each model the default method uses runs the forwards a lone request
runs — one token a row (plain steps, a draft's proposals) and several (verification, a draft
catching up; with hidden states where Medusa and EAGLE read them) — on a scratch cache, so their
graphs are compiled, and under each thread count the engine may step with, so under `auto` each
is judged against eager at that count (one graph serves every count; decoding/compiled.py).
The graphs of several rows, the K policy's step costs at each batch-size bucket and the other
methods' are `idle_tasks`, which the engine thread runs while no request is in flight
(server/service.py); whatever a step needs before they ran it does then (logged; the thread tuner
and the K policy ignore that step's time). Inductor keeps every graph on disk, so a restart finds
them, but dynamo still traces each one again: about 1.6 s a graph for the bundled target here,
which is most of a warm start (docs/batch-tradeoffs.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import product

import torch

from specserve.decoding.calibrate import all_buckets, calibrate, needs_costs
from specserve.decoding.compiled import COMPILE_MODES, TRIALS, kind_name
from specserve.decoding.engine import Engine
from specserve.decoding.kv import KVState

log = logging.getLogger(__name__)

PROMPT_TOKENS = 32  # the scratch cache's prefill
WIDE = 4  # tokens a row of the "several tokens" forwards (any T > 1 shares their graph)

Task = tuple[str, Callable[[], object]]  # (what it does, for the log; the work)


@dataclass
class WarmUp:
    mode: str
    compiled: bool  # whether compiled forwards stay in use (a model that failed to compile: no)
    seconds: float = 0.0
    graphs: int = 0
    verdicts: dict[str, str] = field(default_factory=dict)  # "role rows, tokens a row" -> compiled/eager


Run = tuple[str, bool]  # a model's forwards: (role, with hidden states)


def runs(engine: Engine, methods: list[str]) -> list[Run]:
    """The forwards `methods` run: the target's (with hidden states for Medusa and EAGLE heads),
    the draft's, the EAGLE head's."""
    out = [("target", False)]
    if ("medusa" in methods and engine.medusa is not None) or (
        "eagle" in methods and engine.eagle is not None
    ):
        out.append(("target", True))
    if "draft" in methods and "draft" in engine.compiled:
        out.append(("draft", False))
    if "eagle" in methods and "eagle" in engine.compiled:
        out.append(("eagle", True))
    return out


def describe(run: Run, rows: int, threads: int) -> str:
    """A model's forwards as the log and the idle tasks name them: "the draft's forwards, 2 rows,
    1 threads"."""
    role, hidden = run
    return (f"the {role}'s forwards{' with hidden states' * hidden}, {rows} row{'s' * (rows > 1)}, "
            f"{threads} threads")  # fmt: skip


def warm_up(
    engine: Engine,
    mode: str,
    methods: list[str],
    threads: tuple[int, ...] = (),
    rows: int = 1,
    only: list[Run] | None = None,
) -> WarmUp:
    """Compile (and under `auto`, judge) the lone-request forwards of the models `methods` use
    (rows > 1: those of a batch; only: just these), under each torch thread count in `threads` the
    engine may step with (the graphs compile under the first; each count is judged apart; none:
    the current count)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "off" or not engine.compiled:
        return WarmUp(mode, compiled=False)
    t0 = time.perf_counter()
    models = {"target": engine.target, "draft": engine.draft, "eagle": engine.eagle}
    before = torch.get_num_threads()
    for n in threads or (before,):
        torch.set_num_threads(n)
        for role, hidden in runs(engine, methods) if only is None else only:
            log.info("warm-up: %s", describe((role, hidden), rows, n))
            model = models[role]
            if role == "eagle":
                _forwards(model.decoder, engine.compiled[role], hidden, rows, model.embed)
            else:
                _forwards(model, engine.compiled[role], hidden, rows)
    torch.set_num_threads(before)
    report = WarmUp(mode, compiled=any(c.enabled for c in engine.compiled.values()))
    report.seconds = time.perf_counter() - t0
    report.graphs = sum(len(c.graphs) for c in engine.compiled.values())
    for c in engine.compiled.values():
        for kind, j in c.judged.items():
            if j.compiled is not None:
                report.verdicts[f"{c.role} {kind_name(kind)}"] = "compiled" if j.compiled else "eager"
    found = "".join(f"; {k}: {v}" for k, v in report.verdicts.items())
    log.log(logging.INFO if only is None else logging.DEBUG, "warm-up: %d compiled graphs in %.1f s%s",
            report.graphs, report.seconds, found if report.compiled else "; running eagerly")  # fmt: skip
    return report


def idle_tasks(engine: Engine, mode: str, method: str, threads: tuple[int, ...] = ()) -> list[Task]:
    """What start-up leaves for the engine thread's idle time (`EngineService.idle`), in order:
    the default method's forwards of several rows under each thread count, and the K policy's
    step costs at each batch-size bucket above one; then for each other method its lone-request
    forwards, those of several rows, and its step costs at every bucket. A step that needs one of
    them before it ran does it then (compiling or timing on the engine thread, as without this)."""
    counts = threads or (torch.get_num_threads(),)
    compiling = mode != "off" and bool(engine.compiled)
    done = {(run, 1, n) for run in runs(engine, [method]) for n in counts}  # (start-up's)
    tasks: list[Task] = []
    for m in [method] + [x for x in engine.methods if x not in (method, "none")]:
        # one model's graphs a task (a request waits less), none twice
        for rows, n, run in product((1, 2) if compiling else (), counts, runs(engine, [m])):
            if (run, rows, n) in done:
                continue
            done.add((run, rows, n))
            tasks.append((describe(run, rows, n), partial(warm_up, engine, mode, [m], (n,), rows, [run])))
        if needs_costs(engine, m):
            tasks += [(f"{m}'s step costs at {b} rows", partial(calibrate, engine, (m,), (b,)))
                      for b in all_buckets(engine) if m != method or b > 1]  # fmt: skip
    return tasks


@torch.no_grad()
def _forwards(model, compiled, hidden: bool, rows: int = 1, embed=None) -> None:
    """`rows` rows' forwards of one token and of WIDE tokens, enough of each to compile the graph
    and time it both ways; each forward's tokens are rolled back, so the cache stays small.
    embed: an EAGLE head's (tokens, features) -> input embeddings (fed with zero features)."""
    vocab = model.get_output_embeddings().weight.shape[0]
    tokens = torch.randint(0, vocab, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(0)).tolist()
    kv = KVState.empty(model, rows, compiled=compiled)

    def embeds(toks: list[int]) -> torch.Tensor | None:
        if embed is None:
            return None
        ids = torch.tensor([toks] * rows, device=kv.mask.device)
        p = next(model.parameters())
        features = torch.zeros(rows, len(toks), model.config.hidden_size, dtype=p.dtype, device=p.device)
        return embed(ids, features)

    kv.forward(model, [tokens] * rows, logits="last", embeds=embeds(tokens))  # the prefill: eager
    for width in (1, WIDE):
        for _ in range(2 * TRIALS + 1):  # the first compiles; then both ways, TRIALS each
            kv.forward(model, [tokens[:width]] * rows, hidden=hidden, embeds=embeds(tokens[:width]))
            kv.rollback(torch.zeros(rows, width, dtype=torch.bool, device=kv.mask.device))
