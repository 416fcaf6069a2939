"""Compiled decode steps: torch.compile of a model's forward over its cache's whole capacity.

An eager decode step of a small model is bound by per-op overhead (Python, dispatch, dozens of
small kernels per layer), not by reading the weights. Compiled, the ops fuse and the overhead goes.
The compiled forward writes each step's keys and values into fixed columns of the cache buffers
(`decoding/cache.py:GrowingCache.write_at`) and attends over every column, the caller's 4D mask
hiding holes and unused capacity (`decoding/static.py`), so graphs depend on shapes, not on how full
the cache is.

Shapes are dynamic (rows, tokens per row, cache columns): on CPU inductor then needs at most four
graphs per model and output (dynamo specializes a size of 1: one row or more, one token per row or
more). On CUDA the graphs replay as CUDA graphs ("reduce-overhead"), one per shape met. Prefills
(many tokens per row) stay eager. A model that does not compile runs eagerly from then on, logged.

Once a graph has run, later calls check only the guards that tell this function's graphs apart
(`skip_guard_eval_unsafe`): dynamo's full guard check costs about 0.25 ms a call, 9% of a batch-1
step of the bundled target (plain decoding 399 -> 424 tok/s, draft 322 -> 358 with it).

One graph serves every torch thread count the thread tuner tries: inductor's CPU kernels read
the count when they run (`cpp.dynamic_threads`) and dynamo's global-state guard, which holds the
count (with grad mode and the default dtype, fixed in the engine: its steps run without grad), is
filtered out. Guarded, each count traced and compiled its own copy of every graph: twice the
start-up (docs/batch-tradeoffs.md).

Compiled need not be faster for every model and batch size (on the bundled suite it is at 1-32
rows, 1.14-1.88x; docs/batch-tradeoffs.md), so under `--compile auto` each kind of forward (rows
bucket, one token a row or more, hidden states or not, thread count) is timed both ways on
interleaved forwards and runs compiled only where that is MARGIN faster per token fed (a
forward's time is not all a step pays: within a few percent, eager is the safer bet), re-checked
now and then as caches grow, as the thread tuner does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
import types
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch._dynamo.config as dynamo_config
import torch._inductor.config as inductor_config
import torch.fx.experimental._config as fx_config
from torch._dynamo.utils import counters
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
MAX_TOKENS = 32  # tokens per row a compiled step takes; more (a prefill, a long catch-up) runs eagerly
TRIALS = 4  # timed forwards each way before a kind of forward is judged ...
MARGIN = 0.05  # ... compiled where its forwards are this much faster a token, else eager
RECHECK = 200  # ... and forwards of that kind before it is judged again (costs shift as caches grow)


class CompileFailed(Exception):
    """The compiled forward raised: the caller runs this step eagerly (and every step after)."""


def use_compile_cache(directory: str | Path | None) -> str:
    """Where inductor keeps compiled graphs across runs (its FX graph cache): `directory`, else
    $TORCHINDUCTOR_CACHE_DIR, else ~/.cache/specserve/inductor. Returns the directory."""
    path = str(
        directory or os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path.home() / ".cache/specserve/inductor"
    )
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


Kind = tuple[int, bool, bool, int]  # (rows bucket: B.bit_length(), one token a row, hidden, threads)


@dataclass
class _Judgement:
    """One kind of forward, compiled against eager: seconds per token fed of recent forwards each way."""

    seconds: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})
    compiled: bool | None = None  # the verdict (None: still timing)
    since: int = 0  # forwards since the verdict


def _kind(rows: int, tokens_per_row: int, hidden: bool) -> Kind:
    """Forwards judged together: the graph they run on (one row or more, one token a row or more,
    hidden states), rows by power-of-two bucket (compute-bound from some batch size up), and the
    torch thread count they run under (the thread tuner tries counts on the same steps: a sample
    at two threads against one at one would judge the threads, not the compile)."""
    return rows.bit_length(), tokens_per_row == 1, hidden, torch.get_num_threads()


def kind_name(kind: Kind) -> str:
    """A kind of forward as the log and the warm-up report name it: "1-1 rows, 1 token a row, 2 threads"."""
    rows, one, hidden, threads = kind
    return (f"{2 ** (rows - 1)}-{2**rows - 1} rows, {'1 token' if one else 'tokens > 1'} a row"
            f"{', with hidden states' if hidden else ''}, {threads} threads")  # fmt: skip


RECOMPILE_LIMIT = 32  # graphs per model: 4 shapes x hidden or not on CPU; on CUDA one per shape met
_CODES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its forward's code object


@contextlib.contextmanager
def _tracing():
    """How graphs are traced. Without duck sizing: dynamo otherwise gives input sizes that are
    equal when a graph compiles one symbol: a first step attending over 64 cache columns had its
    span tied to the head size (64) and specialized with it, so the graph compiled again once the
    span grew to 128, mid-serving (1.4-3.5 s on the engine thread). With sizes kept apart, one graph
    serves every span. With Python floats specialized: under dynamic=True dynamo first traces a
    model's float attributes (norm eps, rope scaling) as symbols, fails to turn them into tensors
    and traces the whole forward again (the start-up warm-up went 22.7 -> 17.5 s with a warm cache,
    90.7 -> 74.9 s cold)."""
    with (
        fx_config.patch(use_duck_shape=False),
        dynamo_config.patch(specialize_float=True),
        inductor_config.patch({"cpp.dynamic_threads": True}),  # (kernels: any thread count)
    ):
        yield


def _any_thread_count(guards) -> list[bool]:
    """dynamo's guard filter: every guard but the global state's (module docstring)."""
    return [g.guard_type != "GLOBAL_STATE" for g in guards]


class CompiledForward:
    """One model's compiled forward. Call with ids (or input embeddings [B, T, H]) / position ids
    [B, T], an additive mask
    [B, 1, T, C] over the cache's C columns, the cache (its `write_at` set) and whether the last
    hidden states are wanted; returns logits [B, T, V] and hidden states [B, T, H] or None.

    tune: run each kind of forward the way it measures faster (`wants`, then `timed`), else always
    compiled."""

    def __init__(
        self,
        model: PreTrainedModel,
        role: str,
        tune: bool = False,
        max_tokens: int = MAX_TOKENS,
        fixed_shapes: bool | None = None,
    ) -> None:
        self.model, self.role, self.max_tokens = model, role, max_tokens
        cuda = next(model.parameters()).device.type == "cuda"
        self.tune = tune and not cuda  # (CUDA graphs win where the CPU is the bottleneck)
        # CUDA graphs replay recorded shapes: rows padded to a power of two, the whole capacity
        # (static.py); default: on CUDA only
        self.fixed_shapes = cuda if fixed_shapes is None else fixed_shapes
        # dynamo keeps graphs (and counts recompiles) per code object: each model gets its own
        # copy of `_forward`'s, or every model in the process would share one recompile limit
        # (engines over the same model share it: their graphs are the same). The limit goes to
        # torch.compile itself: dynamo's config is per thread, and the engine steps in its own.
        if model not in _CODES:
            _CODES[model] = CompiledForward._forward.__code__.replace(co_name=f"forward_{len(_CODES)}")
        own = types.MethodType(types.FunctionType(_CODES[model], CompiledForward._forward.__globals__), self)
        how = {"mode": "reduce-overhead"} if cuda else {"options": {"guard_filter_fn": _any_thread_count}}
        self.fn = torch.compile(own, dynamic=True, recompile_limit=RECOMPILE_LIMIT, **how)
        self.enabled = True
        self.graphs: dict[tuple[bool, bool, bool], float] = {}  # (one row, one token, hidden) -> seconds
        self.calls = 0  # compiled forwards run
        self.compiles = 0  # graphs compiled, recompiles included
        self.judged: dict[Kind, _Judgement] = {}
        self.compiled_now = False  # the last call compiled a graph (its time is not a step's)

    def _forward(self, ids, pos, mask, cache, hidden: bool):
        m = self.model
        inputs = {"inputs_embeds": ids} if ids.is_floating_point() else {"input_ids": ids}  # (EAGLE's)
        if hidden:  # Medusa and EAGLE heads read the last hidden states: base model, then lm_head
            h = m.base_model(**inputs, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
            h = h.last_hidden_state
            return m.get_output_embeddings()(h), h
        out = m(**inputs, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        return out.logits, None

    def _known(self, ids, pos, mask, cache, hidden):
        """The forward with only the differentiating guards checked; None (nothing run: dynamo
        refuses at frame entry) when a recompile is due, which the caller then runs with every
        guard checked."""
        try:
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                return self.fn(ids, pos, mask, cache, hidden)
        except RuntimeError as e:
            if "skip_guard_eval_unsafe" not in str(e):
                raise
            self.compiled_now = True  # (its time is a compile's, not a step's)
            return None

    def usable(self, tokens_per_row: int) -> bool:
        return self.enabled and tokens_per_row <= self.max_tokens

    def wants(self, rows: int, tokens_per_row: int, hidden: bool) -> bool:
        """Whether to run this forward compiled: while its kind is being judged, the way with fewer
        samples (compiled first: it compiles then); after, the verdict."""
        if not self.usable(tokens_per_row):
            return False
        if not self.tune:
            return True
        j = self.judged.setdefault(_kind(rows, tokens_per_row, hidden), _Judgement())
        if j.compiled is not None and j.since < RECHECK:
            j.since += 1
            return j.compiled
        return len(j.seconds[True]) <= len(j.seconds[False])

    def timed(self, rows: int, tokens_per_row: int, hidden: bool, compiled: bool, seconds: float) -> None:
        """A forward of this kind ran (compiled or eagerly) in `seconds`: a sample while it is judged."""
        kind = _kind(rows, tokens_per_row, hidden)
        j = self.judged.get(kind)
        if j is None or (j.compiled is not None and j.since < RECHECK) or (compiled and self.compiled_now):
            return
        j.seconds[compiled].append(seconds / (rows * tokens_per_row))  # per token fed: rows differ
        if min(len(s) for s in j.seconds.values()) < TRIALS:
            return
        faster = statistics.median(j.seconds[True]) < (1 - MARGIN) * statistics.median(j.seconds[False])
        if faster != j.compiled:
            log.info(
                "the %s's forwards of %s: %s (%.3f ms a token compiled, %.3f eager)",
                self.role, kind_name(kind), "compiled" if faster else "eager",
                statistics.median(j.seconds[True]) * 1e3, statistics.median(j.seconds[False]) * 1e3,
            )  # fmt: skip
        self.judged[kind] = _Judgement(compiled=faster)

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache, hidden: bool):
        key = (ids.shape[0] == 1, ids.shape[1] == 1, hidden)
        self.compiled_now = key not in self.graphs
        graphs = counters["stats"]["unique_graphs"]  # dynamo's count: recompiles show here too
        t0 = time.perf_counter()
        try:
            out = None
            if not self.compiled_now:  # a graph this forward has run: check only the guards that
                out = self._known(ids, pos, mask, cache, hidden)  # tell graphs apart
            if out is None:  # (may compile: see _tracing)
                with _tracing():
                    out = self.fn(ids, pos, mask, cache, hidden)
        except Exception as e:  # noqa: BLE001 - any failure to compile: this model runs eagerly
            self.enabled = False
            log.warning(
                "the %s does not compile (%s: %s); running it eagerly", self.role, type(e).__name__, e
            )
            raise CompileFailed from e
        self.calls += 1
        if counters["stats"]["unique_graphs"] != graphs:
            self.compiles += 1
            if key in self.graphs:  # a guard failed: a size, a dtype
                log.info("compiled another graph of the %s's (%d threads) in %.1f s", self.role,
                         torch.get_num_threads(), time.perf_counter() - t0)  # fmt: skip
            self.compiled_now = True
        if key not in self.graphs:
            self.graphs[key] = time.perf_counter() - t0
            log.info(
                "compiled the %s's graph for %s, %s%s in %.1f s", self.role,
                "1 row" if key[0] else "rows > 1", "1 token a row" if key[1] else "tokens > 1 a row",
                ", with hidden states" if hidden else "", self.graphs[key],
            )  # fmt: skip
        return out
