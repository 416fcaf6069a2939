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


def build_row(
    state: ServerState,
    request: Request,
    prompt_ids: list[int],
    fields: SamplingFields,
    max_tokens: int | None,
    method: str | None,
    k: int | str | None,
) -> Row:
    """Validate a request against the loaded models; every problem is a 400 naming the value."""
    if fields.n != 1:
        raise APIError(400, f"n={fields.n} is not supported; only n=1", "n")
    if fields.logprobs:
        raise APIError(400, "logprobs are not supported", "logprobs")
    if fields.presence_penalty or fields.frequency_penalty:
        raise APIError(400, "presence/frequency penalties are not supported", "presence_penalty")
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
    try:
        sampling = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=fields.temperature,
            top_k=fields.top_k,
            top_p=fields.top_p,
            seed=fields.seed,
            ignore_eos=fields.ignore_eos,
        )
        spec = SpecParams.parse(method, k, default=state.settings.num_speculative_tokens)
        row = state.engine.make_row(prompt_ids, sampling, spec, request_id=new_id("req"))
    except ValueError as e:
        raise APIError(400, str(e), "max_tokens" if "context" in str(e) else None) from e
    row.arrival = getattr(request.state, "arrival", row.arrival)  # stamped when the request came in
    row.deadline = row.arrival + state.settings.request_timeout_s
    return row


def submit(service: EngineService, row: Row) -> asyncio.Queue:
    try:
        return service.submit(row)
    except QueueFull as e:
        raise APIError(429, "too many requests waiting; retry shortly", headers={"Retry-After": "1"}) from e
    except ShuttingDown as e:
        raise APIError(503, "server is shutting down") from e


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


async def _watch_disconnect(request: Request, q: asyncio.Queue) -> None:
    """The request body is read by now, so the next ASGI message is `http.disconnect`: when the
    client goes (or once the response is sent). Wakes the waiting handler at once, even while the
    row emits every step."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    q.put_nowait(GONE)


async def run_to_end(request: Request, service: EngineService, row: Row, stream: TextStream) -> Outcome:
    """Non-streaming: wait for the row; if the client goes away, abort it (its slot frees at the
    next step) and raise ClientGone."""
    q = submit(service, row)
    watcher = asyncio.create_task(_watch_disconnect(request, q))
    try:
        while True:
            event: Event = await q.get()
            if event is GONE:
                raise ClientGone(row.request_id, row.num_generated)
            stream.push(event.tokens)
            if stream.stopped or event.row is not None:
                break
    finally:
        watcher.cancel()
        if row.finish_reason is None or stream.stopped:
            service.abort(row.request_id, "stop" if stream.stopped else "abort")
    stream.finish()
    finish = _openai_finish(row, stream)
    _close_stats(row)
    return Outcome(row, stream.text, finish)


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
