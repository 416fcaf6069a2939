"""What every generation route shares: building a row from a request, running it, streaming it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from specserve.decoding import SamplingParams, SpecParams
from specserve.decoding.row import Row
from specserve.server.errors import APIError, ClientGone
from specserve.server.schemas import SamplingFields
from specserve.server.service import EngineService, Event, QueueFull, ShuttingDown
from specserve.server.state import ServerState
from specserve.server.text import TextStream


@dataclass
class Outcome:
    """A finished (or stopped) request as the routes report it."""

    row: Row
    text: str
    finish_reason: str  # OpenAI vocabulary: stop / length (abort, timeout and error are raised)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def build_rows(
    state: ServerState,
    request: Request,
    prompt_ids: list[int],
    fields: SamplingFields,
    max_tokens: int | None,
    method: str | None,
    k: int | str | None,
) -> list[Row]:
    """One row per choice (`n`), validated against the loaded models; every problem is a 400
    naming the value. Choice 0 keeps the request's seed (so `n=1` and the first of `n=2` agree);
    choice i > 0 derives its own from it."""
    if fields.presence_penalty or fields.frequency_penalty:
        raise APIError(400, "presence/frequency penalties are not supported", "presence_penalty")
    if getattr(fields, "best_of", None) not in (None, 1):
        raise APIError(400, "best_of is not supported; ask for n choices and pick among them", "best_of")
    method = method or state.settings.method
    if method not in state.engine.methods:
        raise APIError(
            400,
            f"method {method!r} is not loaded; available: {', '.join(state.engine.methods)}",
            "speculation.method",
        )
    ctx = state.engine.context_length(method)
    if max_tokens is None:  # chat default: whatever room the context leaves
        max_tokens = ctx - len(prompt_ids)
    base, rows = new_id("req"), []
    try:
        spec = SpecParams.parse(method, k, default=state.settings.num_speculative_tokens)
        for i in range(fields.n):
            sampling = SamplingParams(
                max_new_tokens=max_tokens,
                temperature=fields.temperature,
                top_k=fields.top_k,
                top_p=fields.top_p,
                seed=choice_seed(fields.seed, i),
                ignore_eos=fields.ignore_eos,
                logprobs=fields.top_logprobs_wanted(),
            )
            rid = base if fields.n == 1 else f"{base}-{i}"
            rows.append(state.engine.make_row(prompt_ids, sampling, spec, request_id=rid))
    except ValueError as e:
        raise APIError(400, str(e), "max_tokens" if "context" in str(e) else None) from e
    for row in rows:
        row.arrival = getattr(request.state, "arrival", row.arrival)  # stamped when the request came in
        row.deadline = row.arrival + state.settings.request_timeout_s
    return rows


def choice_seed(seed: int | None, choice: int) -> int | None:
    if seed is None or choice == 0:
        return seed
    return (seed + choice * 0x9E3779B97F4A7C15) % 2**63  # golden-ratio steps: far apart, in range


def submit(service: EngineService, rows: list[Row]) -> list[asyncio.Queue]:
    """Queue every choice's row, or none of them (a 429 when the server has no room for all)."""
    queues: list[asyncio.Queue] = []
    try:
        for row in rows:
            queues.append(service.submit(row))
    except (QueueFull, ShuttingDown) as e:
        for row in rows[: len(queues)]:
            service.abort(row.request_id)
        if isinstance(e, ShuttingDown):
            raise APIError(503, "server is shutting down") from e
        raise APIError(429, "too many requests waiting; retry shortly", headers={"Retry-After": "1"}) from e
    return queues


def _openai_finish(row: Row, stream: TextStream) -> str:
    if stream.stopped:
        return "stop"
    if row.finish_reason == "timeout":
        raise APIError(504, "request exceeded the server's request timeout")
    if row.finish_reason == "error":
        raise APIError(500, "decoding failed for this request")
    return row.finish_reason or "stop"


def _close_stats(row: Row) -> None:
    if not row.stats.e2e_s:  # stopped by a stop string: the engine retires it a step later
        row.stats.e2e_s = time.perf_counter() - row.arrival


GONE = Event([])  # put on a request's queue by its disconnect watcher


async def _watch_disconnect(request: Request, queues: list[asyncio.Queue]) -> None:
    """The request body is read by now, so the next ASGI message is `http.disconnect`: when the
    client goes (or once the response is sent). Wakes the waiting handler at once, even while its
    rows emit every step."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for q in queues:
        q.put_nowait(GONE)


async def _collect(service: EngineService, row: Row, stream: TextStream, q: asyncio.Queue) -> Outcome:
    try:
        while True:
            event: Event = await q.get()
            if event is GONE:
                raise ClientGone(row.request_id, row.num_generated)
            stream.push(event.tokens)
            if stream.stopped or event.row is not None:
                break
    finally:
        if row.finish_reason is None or stream.stopped:
            service.abort(row.request_id, "stop" if stream.stopped else "abort")
    stream.finish()
    finish = _openai_finish(row, stream)
    _close_stats(row)
    return Outcome(row, stream.text, finish)


async def run_to_end(
    request: Request, service: EngineService, rows: list[Row], streams: list[TextStream]
) -> list[Outcome]:
    """Non-streaming: wait for every choice's row; if the client goes away, abort them (their
    slots free at the next step) and raise ClientGone."""
    queues = submit(service, rows)
    watcher = asyncio.create_task(_watch_disconnect(request, queues))
    waits = [
        asyncio.create_task(_collect(service, r, s, q)) for r, s, q in zip(rows, streams, queues, strict=True)
    ]
    try:
        return list(await asyncio.gather(*waits))
    finally:
        watcher.cancel()
        for task in waits:
            task.cancel()
        for row in rows:  # a choice that failed (timeout, error, client gone) takes the others with it
            if row.finish_reason is None:
                service.abort(row.request_id)


async def stream_deltas(
    service: EngineService, row: Row, stream: TextStream, q: asyncio.Queue
) -> AsyncIterator[tuple[str, list[int], str | None]]:
    """Streaming (after `submit`, so a full queue is still a plain 429): yield (text delta, token
    ids, finish reason or None) per engine step."""
    try:
        while True:
            event: Event = await q.get()
            delta = stream.push(event.tokens)
            if stream.stopped or event.row is not None:
                delta += stream.finish()
                try:
                    finish = _openai_finish(row, stream)
                except APIError as e:
                    finish = "timeout" if e.status == 504 else "error"
                _close_stats(row)
                yield delta, event.tokens, finish
                return
            if delta or event.tokens:
                yield delta, event.tokens, None
    finally:  # client gone (the generator is closed or cancelled) or stop string: free the slot
        if row.finish_reason is None or stream.stopped:
            service.abort(row.request_id, "stop" if stream.stopped else "abort")


Delta = tuple[int, str, list[int], str | None]  # (choice index, text delta, token ids, finish or None)


async def stream_choices(
    service: EngineService, rows: list[Row], streams: list[TextStream], queues: list[asyncio.Queue]
) -> AsyncIterator[Delta]:
    """Streaming of n choices: each choice's deltas as they come, tagged with its index, until
    every choice has finished. Closing the generator (client gone) frees every choice's slot."""
    if len(rows) == 1:
        async for delta, tokens, finish in stream_deltas(service, rows[0], streams[0], queues[0]):
            yield 0, delta, tokens, finish
        return
    merged: asyncio.Queue[Delta | None] = asyncio.Queue()

    async def pump(i: int) -> None:
        async for delta, tokens, finish in stream_deltas(service, rows[i], streams[i], queues[i]):
            merged.put_nowait((i, delta, tokens, finish))
        merged.put_nowait(None)

    pumps = [asyncio.create_task(pump(i)) for i in range(len(rows))]
    try:
        left = len(rows)
        while left:
            item = await merged.get()
            if item is None:
                left -= 1
            else:
                yield item
    finally:
        for task in pumps:
            task.cancel()
