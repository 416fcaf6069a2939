"""OpenAI-compatible /v1/completions and /v1/chat/completions (plus the `speculation` extra field)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request

from specserve.decoding.row import Row
from specserve.server.deps import State, check_model, encode_prompt, require_key, sse
from specserve.server.errors import APIError, error_body
from specserve.server.generation import build_row, new_id, run_to_end, stream_deltas, submit
from specserve.server.schemas import ChatRequest, CompletionRequest, Speculation
from specserve.server.text import TextStream

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


def usage(row: Row) -> dict:
    s = row.stats
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},  # OpenAI's (and vLLM's) field
    }


def _chat_prompt(state, body: ChatRequest) -> list[int]:
    tok = state.target.tokenizer
    if not tok.chat_template:
        raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions", "messages")
    messages = []
    for m in body.messages:
        content = (
            m.content
            if isinstance(m.content, str)
            else "".join(p.get("text", "") for p in (m.content or []) if p.get("type") == "text")
        )
        messages.append({"role": m.role, "content": content})
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok.encode(text, add_special_tokens=False)


async def _stream(kind: str, cid: str, created: int, model: str, body, state, row: Row, text: TextStream):
    """Chunks in OpenAI's format for `kind` "text_completion" or "chat.completion"."""
    q = submit(state.service, row)  # before the 200: a full queue is still a plain 429
    obj = f"{kind}.chunk" if kind == "chat.completion" else kind

    def chunk(delta: str | None, finish: str | None, first: bool = False) -> dict:
        if kind == "chat.completion":
            d = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {})
            choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        return {"id": cid, "object": obj, "created": created, "model": model, "choices": [choice]}

    async def events() -> AsyncIterator[dict]:
        if kind == "chat.completion":
            yield chunk(None, None, first=True)
        async for delta, _, finish in stream_deltas(state.service, row, text, q):
            if finish in ("timeout", "error"):
                status = 504 if finish == "timeout" else 500
                yield error_body(status, f"generation ended early: {finish}")
                return
            if delta or finish:
                out = chunk(delta, finish)
                if finish:
                    out["speculation"] = row.stats.to_dict()
                yield out
        if body.stream_options and body.stream_options.include_usage:
            yield {
                "id": cid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage(row),
            }

    return sse(events())


async def _respond(kind: str, body, prompt_ids: list[int], max_tokens: int | None, request: Request, state):
    """Shared by both routes: build the row, then stream it or answer with the whole choice."""
    spec = body.speculation or Speculation()
    row = build_row(state, request, prompt_ids, body, max_tokens, spec.method, spec.num_speculative_tokens)
    text = TextStream(state.target.tokenizer, body.stop)
    cid, created = new_id("chatcmpl" if kind == "chat.completion" else "cmpl"), int(time.time())
    if body.stream:
        return await _stream(kind, cid, created, body.model, body, state, row, text)
    out = await run_to_end(request, state.service, row, text)
    if kind == "chat.completion":
        choice = {"index": 0, "message": {"role": "assistant", "content": out.text}}
    else:
        choice = {"index": 0, "text": out.text}
    choice |= {"finish_reason": out.finish_reason, "logprobs": None}
    return {
        "id": cid,
        "object": kind,
        "created": created,
        "model": body.model,
        "choices": [choice],
        "usage": usage(row),
        "speculation": row.stats.to_dict(),
    }


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, state: State):
    body.model = check_model(state, body.model)
    if body.echo:
        raise APIError(400, "echo is not supported", "echo")
    prompt = encode_prompt(state, body.prompt)
    return await _respond("text_completion", body, prompt, body.max_tokens, request, state)


@router.post("/chat/completions")
async def chat(body: ChatRequest, request: Request, state: State):
    body.model = check_model(state, body.model)
    prompt = _chat_prompt(state, body)
    return await _respond(
        "chat.completion", body, prompt, body.max_completion_tokens or body.max_tokens, request, state
    )
