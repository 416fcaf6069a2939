"""The engine thread: owns the models, steps the continuous batch, streams tokens to asyncio.

Requests cross threads only through `submit` / `abort` (engine side: a locked queue) and
per-request `asyncio.Queue`s (server side), fed once per prefill or sub-batch decode: one
`call_soon_threadsafe` carries every request's events of it, so the event loop wakes once per
phase, not once per row (at batch 32 the wake-ups alone cost the engine thread GIL time).

What start-up leaves undone (graphs for batches, step costs at each batch size:
`decoding/warmup.py:idle_tasks`) runs here one task at a time, once no request has been in
flight for IDLE_S; a request that arrives meanwhile waits for that task only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from specserve.decoding import Engine
from specserve.decoding.row import Row
from specserve.decoding.stats import StepStats
from specserve.decoding.warmup import Task
from specserve.server.threads import ThreadTuner

log = logging.getLogger(__name__)

IDLE_S = 1.0  # seconds without work before an idle task starts (not between a client's requests)


class QueueFull(Exception):
    """The waiting queue is at --max-waiting: the caller should answer 429."""


class ShuttingDown(Exception):
    """The server is draining for shutdown: the caller should answer 503."""


@dataclass
class Event:
    """What a request's queue receives: tokens as they are emitted, then one final event."""

    tokens: list[int]
    row: Row | None = None  # set on the final event (finish_reason and stats are on it)


class EngineService:
    def __init__(self, engine: Engine, max_waiting: int, tuner: ThreadTuner | None = None) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self.tuner = tuner or ThreadTuner(())
        self.queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.step_listeners: list = []  # callables taking StepStats (metrics)
        self.finish_listeners: list = []  # callables taking each finished Row (metrics)
        self.token_listeners: list = []  # callables taking (Row, tokens) per emission (metrics)
        self.accepting = True
        self.idle: deque[Task] = deque()  # run one at a time while idle (start-up's leftovers)
        self._idle_since = time.monotonic()
        self._idle_s = 0.0  # spent on idle tasks so far
        self._idle_running = False
        self._pending: list[tuple[tuple[asyncio.AbstractEventLoop, asyncio.Queue], Event]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="specserve-engine", daemon=True)
        engine.on_tokens = self._on_tokens
        engine.on_step = self._on_step
        engine.on_plan = self.tuner.plan  # threads per sub-batch step, timed by its stats

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def idle_left(self) -> int:
        """Idle-time warm-up tasks not done yet (the one running included)."""
        return len(self.idle) + self._idle_running

    @property
    def num_waiting(self) -> int:
        return len(self.engine.waiting)

    @property
    def num_running(self) -> int:
        return self.engine.num_running

    def submit(self, row: Row) -> asyncio.Queue:
        """Queue a validated row; returns the queue its events arrive on. Call from the event loop."""
        if not self.accepting:
            raise ShuttingDown()
        # capacity: every batch slot plus --max-waiting queued behind them
        if self.num_waiting + self.num_running >= self.engine.max_batch_size + self.max_waiting:
            raise QueueFull()
        q: asyncio.Queue = asyncio.Queue()
        self.queues[row.request_id] = (asyncio.get_running_loop(), q)
        self.engine.add(row)
        self._wake.set()
        return q

    def abort(self, request_id: str, reason: str = "abort") -> None:
        """Cancel a request (client gone; reason "stop" for a stop string); its slot frees next step."""
        if self.queues.pop(request_id, None) is not None:
            self.engine.abort(request_id, reason)
            self._wake.set()

    def _post(self, request_id: str, event: Event) -> None:
        target = self.queues.get(request_id)
        if target is not None:
            self._pending.append((target, event))

    def _flush(self) -> None:
        """Hand this step's events to their event loops: one call per loop."""
        pending, self._pending = self._pending, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Event]]] = {}
        for (loop, q), event in pending:
            by_loop.setdefault(loop, []).append((q, event))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _on_tokens(self, row: Row, tokens: list[int]) -> None:
        if tokens:
            self._post(row.request_id, Event(tokens))
            for listener in self.token_listeners:
                listener(row, tokens)

    def _on_step(self, stats: StepStats) -> None:
        self.tuner.observe(stats)
        for listener in self.step_listeners:
            listener(stats)
        self._flush()  # after each prefill and each sub-batch's decode: first tokens go out at once

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.engine.has_work():
                if self.idle and time.monotonic() - self._idle_since >= IDLE_S:
                    self._run_idle_task()
                    continue
                self._wake.wait(IDLE_S / 2 if self.idle else 0.5)
                self._wake.clear()
                continue
            try:
                finished = self.engine.step()
            except Exception:  # the engine contains per-batch failures; this is a last resort
                log.exception("engine step failed; failing every request in flight")
                finished = self.engine.fail_all()
            for row in finished:
                self._post(row.request_id, Event([], row))
                self.queues.pop(row.request_id, None)
                for listener in self.finish_listeners:
                    try:  # (metrics) never at the cost of the engine thread
                        listener(row)
                    except Exception:
                        log.exception("a finish listener failed for request %s", row.request_id)
            self._flush()
            self._idle_since = time.monotonic()

    def _run_idle_task(self) -> None:
        self._idle_running = True
        what, work = self.idle.popleft()
        t0 = time.perf_counter()
        try:
            work()
        except Exception:  # a warm-up left undone is done when first needed instead
            log.exception("idle-time warm-up failed: %s", what)
        finally:
            self._idle_running = False
        seconds = time.perf_counter() - t0
        self._idle_s += seconds
        log.info("idle-time warm-up: %s in %.1f s (%d left)", what, seconds, len(self.idle))
        if not self.idle:
            log.info("idle-time warm-up done in %.1f s", self._idle_s)


def _deliver(items: list[tuple[asyncio.Queue, Event]]) -> None:
    for q, event in items:
        q.put_nowait(event)
