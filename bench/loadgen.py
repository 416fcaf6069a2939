"""Request drivers for `specserve bench serve`: streaming /generate clients, closed and open loop.

Closed loop: C workers each send requests back to back (the next one when the previous finishes),
so the server always holds about C requests. Open loop: requests arrive at Poisson times at a given
rate (exponential gaps from a seeded RNG; rate inf sends them all at once), however slowly the
server answers, so queueing shows up in the latencies, as in `vllm bench serve --request-rate`.

Every level is bounded: at most `num_requests` are sent, none after `duration_s`, and whatever is
still in flight at `timeout_s` is cancelled and counted as failed.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np


@dataclass
class LoadConfig:
    url: str
    max_tokens: int
    timeout_s: float  # per level: in-flight requests are cancelled then
    duration_s: float = 0.0  # per level: no request is sent after this (0: no bound)
    k: int | str | None = None  # num_speculative_tokens override: K or "auto" (None: the server's)
    api_key: str | None = None
    seed: int = 0  # Poisson arrivals and output lengths
    range_ratio: float = 0.0  # output lengths uniform in [L(1 - r), L(1 + r)] (0: all L)
    slos: dict[str, float] | None = None  # --goodput: the report's SLOs in seconds (ttft, tpot, e2e)
    workload: str = "realistic"  # or "equal": bench/prompts.py WORKLOADS


SAMPLE_EVERY = 3  # realistic: requests i with i % 3 == 2 sample ...
TEMPERATURE = 0.7  # ... at this temperature, seeded by their index


@dataclass
class Sample:
    """One request as the client saw it; times in seconds, `start_s` from the level's start."""

    method: str
    start_s: float = 0.0
    ok: bool = False
    ttft_s: float | None = None
    e2e_s: float | None = None
    tokens: int = 0  # generated tokens received (token_ids of the stream's events)
    itl_s: list[float] = field(default_factory=list)  # gaps between successive token events
    stats: dict = field(default_factory=dict)  # the server's per-request stats (final event)
    error: str = ""


@dataclass
class LevelRun:
    samples: list[Sample]
    wall_s: float  # first send to the last request's end (or the timeout)
    sent: int
    timed_out: bool


def split_variant(variant: str) -> tuple[str, str | None]:
    """ "draft:auto" -> ("draft", "auto"); "ngram" -> ("ngram", None): a method and its own K."""
    method, _, k = variant.partition(":")
    return method, k or None


def output_lengths(cfg: LoadConfig, n: int) -> list[int]:
    """Each request's max_tokens: L, or uniform in [L(1 - r), L(1 + r)] (vLLM's --random-range-ratio),
    the same draws for every method. Equal lengths started together keep plain decoding in lockstep
    (every row joins and leaves at once), which no real workload does."""
    L, r = cfg.max_tokens, cfg.range_ratio
    if not r:
        return [L] * n
    rng = np.random.default_rng(cfg.seed)
    return rng.integers(max(1, round(L * (1 - r))), round(L * (1 + r)) + 1, n).tolist()


def request_body(
    prompt: str, variant: str, cfg: LoadConfig, max_tokens: int | None = None, index: int = 0
) -> dict:
    """The /generate body of request `index` of a level (the same for every method)."""
    method, k = split_variant(variant)
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens or cfg.max_tokens,
        "method": method,
        "stream": True,
        "ignore_eos": cfg.workload == "equal",
    }
    if cfg.workload == "realistic" and index % SAMPLE_EVERY == SAMPLE_EVERY - 1:
        body |= {"temperature": TEMPERATURE, "seed": cfg.seed * 1_000_003 + index}
    k = k or cfg.k
    if k is not None and method != "none":
        body["num_speculative_tokens"] = k if k == "auto" else int(k)
    return body


def run(coro):
    """Run a load coroutine on uvloop where installed (as the server does): the client shares the
    machine with the server, so every microsecond it spends per streamed token is taken from it."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        uvloop = None
    if uvloop is None or not hasattr(asyncio, "Runner"):  # asyncio.Runner: Python 3.11+
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def one_request(client: httpx.AsyncClient, body: dict, s: Sample) -> None:
    """Stream one /generate request into `s` (filled as events arrive, so a cancel keeps what came)."""
    t0 = time.perf_counter()
    last, finished = t0, False
    try:
        async with client.stream("POST", "/generate", json=body) as r:
            if r.status_code != 200:
                s.error = f"HTTP {r.status_code}: {(await r.aread())[:200].decode(errors='replace')}"
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: ") :])
                if "error" in event:
                    s.error = f"server: {event['error'].get('message', event['error'])}"
                    return
                if event.get("token_ids"):
                    now = time.perf_counter()
                    if s.ttft_s is None:
                        s.ttft_s = now - t0
                    else:
                        s.itl_s.append(now - last)
                    last = now
                    s.tokens += len(event["token_ids"])
                if "stats" in event:
                    s.stats = event["stats"]
                finished = finished or "finish_reason" in event
        s.e2e_s, s.ok = time.perf_counter() - t0, finished
        if not finished:
            s.error = "the stream ended without a finish event"
    except httpx.HTTPError as e:
        s.error = f"{type(e).__name__}: {e}"


def _client(cfg: LoadConfig, max_connections: int | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(base_url=cfg.url, headers=headers, timeout=cfg.timeout_s, limits=limits)


async def _finish(tasks: list[asyncio.Task], samples: list[Sample], t0: float, cfg: LoadConfig) -> LevelRun:
    """Wait for the tasks until the level's timeout; cancel the rest and mark them failed."""
    timed_out = False
    if tasks:
        remaining = max(0.0, cfg.timeout_s - (time.perf_counter() - t0))
        _, pending = await asyncio.wait(tasks, timeout=remaining)
        if pending:
            timed_out = True
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - t0
    for s in samples:
        if not s.ok and not s.error:  # cancelled in flight (or never started)
            s.error = f"unfinished at --timeout-s {cfg.timeout_s:g}"
    return LevelRun(samples, wall, len(samples), timed_out)


async def closed_loop(
    cfg: LoadConfig,
    prompts: list[str],
    method: str,
    concurrency: int,
    num_requests: int,
    on_done: Callable[[], None] = lambda: None,
) -> LevelRun:
    """`concurrency` workers send `num_requests` requests back to back."""
    samples: list[Sample] = []
    counter = iter(range(num_requests))
    lengths = output_lengths(cfg, num_requests)
    async with _client(cfg, concurrency) as client:
        t0 = time.perf_counter()

        async def worker() -> None:
            for i in counter:
                if cfg.duration_s and time.perf_counter() - t0 >= cfg.duration_s:
                    return
                s = Sample(method, start_s=time.perf_counter() - t0)
                samples.append(s)
                body = request_body(prompts[i % len(prompts)], method, cfg, lengths[i], i)
                await one_request(client, body, s)
                on_done()

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        return await _finish(workers, samples, t0, cfg)


def poisson_arrivals(rate: float, n: int, seed: int) -> list[float]:
    """Send times (s from the start) of n requests: exponential gaps of mean 1/rate; inf: all at 0."""
    if math.isinf(rate):
        return [0.0] * n
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    gaps[0] = 0.0  # the first request starts the level
    return np.cumsum(gaps).tolist()


async def open_loop(
    cfg: LoadConfig,
    prompts: list[str],
    method: str,
    rate: float,
    num_requests: int,
    on_done: Callable[[], None] = lambda: None,
) -> LevelRun:
    """Send `num_requests` at Poisson times of `rate` req/s, without waiting for answers."""
    samples: list[Sample] = []
    tasks: list[asyncio.Task] = []
    arrivals = poisson_arrivals(rate, num_requests, cfg.seed)
    lengths = output_lengths(cfg, num_requests)

    async def send(s: Sample, body: dict) -> None:
        await one_request(client, body, s)
        on_done()

    async with _client(cfg, None) as client:
        t0 = time.perf_counter()
        for i, at in enumerate(arrivals):
            if (cfg.duration_s and at >= cfg.duration_s) or at >= cfg.timeout_s:
                break
            delay = at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            s = Sample(method, start_s=time.perf_counter() - t0)
            samples.append(s)
            body = request_body(prompts[i % len(prompts)], method, cfg, lengths[i], i)
            tasks.append(asyncio.create_task(send(s, body)))
        return await _finish(tasks, samples, t0, cfg)
