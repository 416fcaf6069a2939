"""POST /generate: the native route. Greedy by default; returns token ids and per-request stats."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request

from specserve.server.deps import State, require_key, sse
from specserve.server.errors import APIError, error_body
from specserve.server.generation import build_rows, run_to_end, stream_deltas, submit
from specserve.server.logprobs import native_logprobs
from specserve.server.schemas import GenerateRequest
from specserve.server.text import TextStream

router = APIRouter(dependencies=[Depends(require_key)])


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request, state: State):
    if (body.prompt is None) == (body.prompt_token_ids is None):
        raise APIError(400, "send exactly one of prompt and prompt_token_ids", "prompt")
    if body.n != 1:
        raise APIError(400, "/generate returns one sequence; use /v1/completions for n > 1", "n")
    ids = state.target.tokenizer.encode(body.prompt) if body.prompt is not None else body.prompt_token_ids
    (row,) = build_rows(state, request, ids, body, body.max_tokens, body.method, body.num_speculative_tokens)
    text = TextStream(state.target.tokenizer, body.stop)
    lp = body.logprobs is not None
    if not body.stream:
        (out,) = await run_to_end(request, state.service, [row], [text])
        return {
            "id": row.request_id,
            "text": out.text,
            "token_ids": row.generated,
            "finish_reason": out.finish_reason,
            "stats": row.stats.to_dict(),
        } | ({"logprobs": native_logprobs(row.logprobs)} if lp else {})
    (q,) = submit(state.service, [row])

    async def events() -> AsyncIterator[dict]:
        seen = 0
        async for delta, tokens, finish in stream_deltas(state.service, row, text, q):
            if finish in ("timeout", "error"):
                yield error_body(504 if finish == "timeout" else 500, f"generation ended early: {finish}")
                return
            event = {"text": delta, "token_ids": tokens}
            if lp:
                event["logprobs"] = native_logprobs(row.logprobs[seen : seen + len(tokens)])
                seen += len(tokens)
            if finish:
                event |= {"finish_reason": finish, "stats": row.stats.to_dict()}
            yield event

    return sse(events())
