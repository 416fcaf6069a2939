"""The engine: continuous batching of requests over a target (and draft) model.

`add` queues a request; each `step` admits waiting requests into free slots (a batched prefill per
method), then runs one propose -> verify -> accept -> commit step for every running sub-batch, and
retires finished rows. Rows join and leave only between steps. One thread owns an engine.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from transformers import PreTrainedModel

from specserve.decoding.attention import AttentionLayout
from specserve.decoding.batch import SubBatch, make_proposer
from specserve.decoding.calibrate import step_costs
from specserve.decoding.compiled import COMPILE_MODES, CompiledForward
from specserve.decoding.kv import KVState
from specserve.decoding.medusa import medusa_setup
from specserve.decoding.params import METHODS, SamplingParams, SpecParams
from specserve.decoding.policy import Schedule, SchedulePolicy
from specserve.decoding.prefix_cache import PrefixCache
from specserve.decoding.row import Row, TokenLogprob
from specserve.decoding.stats import RequestStats, StepStats
from specserve.decoding.step import decode_step, prefill
from specserve.decoding.tree import Tree

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    request_id: str
    token_ids: list[int]  # generated tokens only (a final EOS/stop token included)
    finish_reason: str
    stats: RequestStats
    logprobs: list[TokenLogprob] = field(default_factory=list)  # per token, when sampling.logprobs is set


OnTokens = Callable[[Row, list[int]], None]
OnStep = Callable[[StepStats], None]
Charge = Callable[[StepStats, list[Row]], None]  # an accountant: bytes/FLOPs of a step onto its rows


class Engine:
    def __init__(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None = None,
        *,
        medusa: nn.Module | None = None,
        tree: Tree | None = None,
        eagle: nn.Module | None = None,
        eos_token_ids: tuple[int, ...] = (),
        max_batch_size: int = 8,
        on_tokens: OnTokens | None = None,
        on_step: OnStep | None = None,
        charge: Charge | None = None,
        prefix_cache_bytes: int = 0,  # prompt keys/values kept per model for reuse (0: off)
        compile: str = "off",  # compiled decode steps: off, on, auto (decoding/compiled.py)
        schedule: Schedule | None = None,  # K by method and batch size for "auto" rows (None: measured)
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        for model in filter(None, (target, draft)):
            AttentionLayout.of(model.config)  # UnsupportedModel now, not at the first request
        self.target, self.draft = target, draft
        self.medusa = medusa_setup(medusa, tree, target.device) if medusa is not None else None
        self.eagle = eagle
        self.eos_token_ids = tuple(eos_token_ids)
        self.max_batch_size = max_batch_size
        self.on_tokens = on_tokens or (lambda row, toks: None)
        self.on_step = on_step or (lambda stats: None)
        self.charge = charge
        self.on_plan: Callable[[str, str, int, int], bool] = lambda phase, method, k, rows: False
        # ^ (phase, method, K, rows) before each prefill or decode of a sub-batch: a thread tuner;
        # True: the step is one of its trials
        self.waiting: deque[Row] = deque()
        self.batches: dict[str, SubBatch] = {}
        self.policy = SchedulePolicy(partial(step_costs, self), schedule or {})  # K for "auto" rows
        self._aborts: dict[str, str] = {}  # request id -> finish reason to record
        self._joining: list[Row] = []  # admitted this step, not yet in a sub-batch
        self._lock = threading.Lock()  # guards waiting and _aborts against other threads
        self._ids = itertools.count()
        self.prefix = {m: PrefixCache(prefix_cache_bytes) for m in ("target", "draft") if prefix_cache_bytes}
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        models = {"target": target, "draft": draft, "eagle": eagle.decoder if eagle is not None else None}
        models = models if compile != "off" else {}
        tune = compile == "auto"  # each kind of forward the faster way, measured
        self.compiled = {role: CompiledForward(m, role, tune) for role, m in models.items() if m is not None}

    @property
    def methods(self) -> tuple[str, ...]:
        loaded = {
            "draft": self.draft is not None,
            "medusa": self.medusa is not None,
            "eagle": self.eagle is not None,
        }
        return tuple(m for m in METHODS if loaded.get(m, True))

    def context_length(self, method: str) -> int:
        models = [self.target] + ([self.draft] if method == "draft" and self.draft is not None else [])
        return min(int(m.config.max_position_embeddings) for m in models)

    def make_row(
        self, prompt: list[int], sampling: SamplingParams, spec: SpecParams, request_id: str | None = None
    ) -> Row:
        """Validate a request and build its row; raises ValueError naming the offending value."""
        if spec.method not in self.methods:
            raise ValueError(
                f"method {spec.method!r} is not available here; loaded: {', '.join(self.methods)}"
            )
        if not prompt:
            raise ValueError("the prompt is empty")
        ctx = self.context_length(spec.method)
        if len(prompt) + sampling.max_new_tokens > ctx:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_new_tokens ({sampling.max_new_tokens}) exceeds "
                f"the model context of {ctx} tokens"
            )
        vocab = self.target.get_output_embeddings().weight.shape[0]
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt token ids must lie in [0, {vocab})")
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        return Row.start(request_id, prompt, sampling, spec, self.eos_token_ids, max_len=ctx)

    def add(self, row: Row) -> None:
        with self._lock:
            self.waiting.append(row)

    def abort(self, request_id: str, reason: str = "abort") -> None:
        """Cancel a waiting or running request; its slot is freed at the next step boundary.

        `reason` is recorded as its finish reason ("stop" when the caller found a stop string)."""
        with self._lock:
            self._aborts[request_id] = reason

    @property
    def num_running(self) -> int:
        return sum(len(b.rows) for b in self.batches.values())

    def kv_bytes(self) -> int:
        """Bytes of KV cache the running sub-batches hold (target and draft; holes included)."""
        return sum(b.nbytes() for b in list(self.batches.values()))

    def has_work(self) -> bool:
        return bool(self.waiting) or self.num_running > 0

    def new_batch(self, method: str, scratch: bool = False) -> SubBatch:
        """An empty sub-batch of `method`; scratch: kept out of the prefix cache (calibration)."""
        prefix = None if scratch else self.prefix.get("draft")
        compiled = self.compiled.get("eagle" if method == "eagle" else "draft")  # the proposer's model's
        proposer = make_proposer(method, self.draft, self.medusa, prefix, compiled, self.eagle)
        return SubBatch(method, KVState.empty(self.target, 0, compiled=self.compiled.get("target")), proposer)

    def _batch(self, method: str) -> SubBatch:
        if method not in self.batches:
            self.batches[method] = self.new_batch(method)
        return self.batches[method]

    def _apply_aborts(self) -> list[Row]:
        """Drop aborted and expired requests, waiting or running, so their slots are free this step."""
        now = time.perf_counter()
        with self._lock:
            aborts, self._aborts = self._aborts, {}
            for r in self.waiting:
                _mark(r, aborts, now)
            dropped = [r for r in self.waiting if r.finish_reason]
            self.waiting = deque(r for r in self.waiting if not r.finish_reason)
        for batch in self.batches.values():
            for r in batch.rows:
                _mark(r, aborts, now)
            dropped += batch.retire()
        return dropped

    def _k_max(self, batch: SubBatch) -> int:
        """The most K the sub-batch's "auto" rows allow (Medusa: its tree's depth); 0: none is."""
        k_max = max((r.spec.num_speculative_tokens for r in batch.rows if r.spec.adaptive), default=0)
        if batch.method == "medusa":
            k_max = min(k_max, batch.proposer.tree.max_depth)
        return 0 if batch.method == "none" else k_max

    def _decode(self, batch: SubBatch) -> StepStats:
        """A decode step of a sub-batch, "auto" rows at the policy's K (Medusa: the tree's depth),
        and the outcome back to the policy. A step during which a graph compiled is marked: its
        time is not what the step costs."""
        B, k_max = len(batch.rows), self._k_max(batch)
        k = sampled = None
        if k_max:  # (acceptance is kept per kind of row: only the policy needs them)
            sampled = [not r.sampling.greedy for r in batch.rows]
            k = self.policy.choose(batch.method, B, k_max, sum(sampled))
        trial = self.on_plan("decode", batch.method, batch.fixed_k if k is None else k, B)
        compiles, t0 = self.compiles(), time.perf_counter()
        stats = decode_step(self.target, batch, self.on_tokens, k)
        stats.compiled, stats.trial = self.compiles() > compiles, trial
        if k is not None:
            self.policy.observe(stats, time.perf_counter() - t0, sampled)
        return stats

    def compiles(self) -> int:
        """Graphs compiled so far (a step that compiled one: its time is not the step's)."""
        return sum(c.compiles for c in self.compiled.values())

    def _report(self, stats: StepStats, rows: list[Row]) -> None:
        if self.charge is not None:
            self.charge(stats, rows)
        self.on_step(stats)

    def fail_all(self) -> list[Row]:
        """Fail every waiting, joining and running request and start afresh (after an unexpected
        error outside the contained stages): none is left without an answer."""
        with self._lock:
            rows = list(self.waiting)
            self.waiting.clear()
        rows += [r for r in self._joining if r.finish_reason is None]
        rows += [r for b in self.batches.values() for r in b.rows]
        self._joining = []
        self.batches.clear()
        return _fail(list({id(r): r for r in rows}.values()))

    def _admit(self) -> list[Row]:
        with self._lock:
            free = self.max_batch_size - self.num_running
            self._joining = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
            return self._joining

    def _join(self, method: str, rows: list[Row]) -> list[Row]:
        """Set up, prefill and merge one method's joining rows; returns the rows that failed (all
        of them when any stage raises, and the method's running rows too if the merge did)."""
        try:
            joining = self.new_batch(method)
            self.on_plan("prefill", method, 0, len(rows))
            stats = prefill(self.target, joining, rows, self.on_tokens, self.prefix.get("target"))
            self._report(stats, rows)
        except Exception:
            log.exception("prefill failed for %d %s request(s)", len(rows), method)
            return _fail(rows)
        try:
            self._batch(method).merge(joining)
        except Exception:
            log.exception("joining %d %s request(s) to the batch failed", len(rows), method)
            running = self.batches.pop(method, None)
            return _fail(rows + [r for r in (running.rows if running else []) if r not in rows])
        return []

    @torch.no_grad()  # (as the warm-up: what lets compiled.py drop dynamo's global-state guard)
    def step(self) -> list[Row]:
        """Admit, decode one step for each sub-batch, retire. Returns the rows that finished.

        A failure is contained: a set-up or prefill that raises fails only the joining rows (they
        are prefilled apart, then merged); a decode step that raises fails the rows of its
        sub-batch. Anything else raises to the caller, whose `fail_all` answers every row held.
        """
        finished = self._apply_aborts()
        admitted = self._admit()
        now = time.perf_counter()
        by_method: dict[str, list[Row]] = {}
        for r in admitted:
            r.admitted = now
            by_method.setdefault(r.spec.method, []).append(r)
        for method, rows in by_method.items():
            finished += self._join(method, rows)
        self._joining = []
        for method, batch in list(self.batches.items()):
            finished += batch.retire()  # rows done at prefill, or aborted
            if not batch.rows:
                continue
            try:
                stats = self._decode(batch)
                self._report(stats, list(batch.rows))
            except Exception:
                log.exception("decode step failed for %d %s request(s)", len(batch.rows), method)
                finished += _fail(batch.rows)
                del self.batches[method]  # its cache state is unknown: start the method afresh
                continue
            finished += batch.retire()
        end = time.perf_counter()
        for r in finished:
            r.stats.e2e_s = end - r.arrival
        return finished

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingParams | list[SamplingParams],
        spec: SpecParams | list[SpecParams],
    ) -> list[GenerationResult]:
        """Run prompts to completion with continuous batching; results in input order.

        `sampling` / `spec` are one for all prompts or one per prompt.
        """
        samplings = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        specs = spec if isinstance(spec, list) else [spec] * len(prompts)
        rows = [
            self.make_row(p, s, sp, request_id=str(i))
            for i, (p, s, sp) in enumerate(zip(prompts, samplings, specs, strict=True))
        ]
        for r in rows:
            self.add(r)
        while self.has_work():
            self.step()
        return [
            GenerationResult(r.request_id, r.generated, r.finish_reason or "abort", r.stats, r.logprobs)
            for r in rows
        ]


def _mark(row: Row, aborts: dict[str, str], now: float) -> None:
    if row.request_id in aborts:
        row.finish_reason = row.finish_reason or aborts[row.request_id]
    elif row.deadline is not None and now > row.deadline:
        row.finish_reason = "timeout"


def _fail(rows: list[Row]) -> list[Row]:
    for r in rows:
        r.finish_reason = "error"
    return list(rows)
