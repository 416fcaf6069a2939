"""App factory: models load in the lifespan; state lives on `app.state.specserve`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from specserve import __version__
from specserve.decoding import Engine
from specserve.decoding.calibrate import calibrate
from specserve.decoding.compiled import use_compile_cache
from specserve.decoding.warmup import idle_tasks, warm_up
from specserve.metrics.accounting import build_accountant
from specserve.metrics.peaks import device_peaks
from specserve.metrics.prometheus import ServerMetrics
from specserve.models.loading import load_models
from specserve.server.errors import BodyLimit, install_error_handlers
from specserve.server.routes import native, openai, system
from specserve.server.service import EngineService
from specserve.server.settings import Settings
from specserve.server.state import ServerState
from specserve.server.threads import ThreadTuner, thread_candidates

log = logging.getLogger(__name__)


def load_state(settings: Settings, registry: CollectorRegistry | None = None) -> ServerState:
    tuner = ThreadTuner(thread_candidates(settings.threads, settings.device))
    if tuner.candidates:
        torch.set_num_threads(max(tuner.candidates))  # loading; each step then sets its own
    use_compile_cache(settings.compile_cache)
    models = load_models(
        str(settings.target), settings.draft, settings.medusa, settings.eagle,
        dtype=settings.dtype, device=settings.device, trust_remote_code=settings.trust_remote_code,
        eagle_dtype=settings.eagle_dtype,
    )  # fmt: skip
    target, draft, heads = models.target, models.draft, models.medusa
    engine = Engine(
        target.model,
        draft.model if draft else None,
        medusa=heads,
        eagle=models.eagle,
        eos_token_ids=target.eos_token_ids,
        max_batch_size=settings.max_batch_size,
        prefix_cache_bytes=int(settings.prefix_cache_mb * 2**20),
        compile=settings.compile,
        schedule=settings.speculation_schedule,
    )
    service = EngineService(engine, settings.max_waiting, tuner)
    metrics = ServerMetrics(registry or CollectorRegistry())
    if settings.metrics:
        peaks = device_peaks(target.device, target.dtype, settings.peak_bandwidth, settings.peak_flops)
        engine.charge = build_accountant(target, draft, heads, peaks, models.eagle)
        service.step_listeners.append(metrics.on_step)
        service.token_listeners.append(metrics.on_tokens)
        service.finish_listeners.append(metrics.on_finished)
        metrics.peak_bw.set(peaks.bytes_per_s)
        metrics.peak_flops.set(peaks.flops_per_s)
        for name, cost in engine.charge.costs.items():
            metrics.weight_bytes.labels(name).set(cost.weight_bytes)
    metrics.threads.set_function(lambda: tuner.current)
    metrics.info.info({
        "version": __version__, "target": str(settings.target), "draft": settings.draft or "",
        "medusa": settings.medusa or "", "eagle": settings.eagle or "", "device": str(target.device),
        "dtype": settings.dtype,
        "eagle_dtype": str(models.eagle.dtype).removeprefix("torch.") if models.eagle else "",
        "methods": ",".join(engine.methods),
    })  # fmt: skip
    return ServerState(settings, target, draft, engine, service, metrics, int(time.time()))


class StampArrival:
    """Outermost: note when each request reached the server, so queue time, TTFT and e2e in the
    per-request stats include parsing, validation and tokenization, as the client sees them."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["arrival"] = time.perf_counter()
        await self.app(scope, receive, send)


def warm_and_start(state: ServerState) -> None:
    """Compile (or not: `--compile`) the decode steps a lone request of the default method runs and
    time its steps for choosing K, then start the engine thread; graphs for batches, step costs at
    larger batch sizes and the other methods' are left for the engine's idle time. Runs while the
    server already listens: /health and the generation routes answer 503 until it is done."""
    settings, engine, service = state.settings, state.engine, state.service
    t0 = time.perf_counter()
    try:
        warm_up(engine, settings.compile, [settings.method], service.tuner.candidates)
        calibrate(engine, (settings.method,), (1,))  # the K policy's step costs at batch size 1
        if settings.idle_warm_up:  # the rest while no request is in flight
            later = idle_tasks(engine, settings.compile, settings.method, service.tuner.candidates)
            service.idle.extend(later)
    except Exception:  # a compile failure is handled inside; anything else must not keep us down
        log.exception("warm-up failed; serving with what it left")
    finally:
        service.start()
        state.ready = True
    log.info(
        "serving %s (methods: %s) on %s:%d: ready %.1f s after loading, %d warm-up tasks left for idle",
        settings.model_name, ", ".join(engine.methods), settings.host, settings.port,
        time.perf_counter() - t0, len(service.idle),
    )  # fmt: skip


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await asyncio.to_thread(load_state, settings, registry)  # a bad model fails start-up
        app.state.specserve = state
        warming = asyncio.create_task(asyncio.to_thread(warm_and_start, state))
        yield
        await warming  # (a thread: it cannot be cancelled, only waited for)
        state.service.accepting = False  # drain: finish what is in flight, within the shutdown timeout
        deadline = time.monotonic() + settings.shutdown_timeout_s
        while state.engine.has_work() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        state.service.stop()
        log.info("engine stopped")

    app = FastAPI(title="specserve", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(StampArrival)
    for router in (system.router, openai.router, native.router):
        app.include_router(router)
    return app
