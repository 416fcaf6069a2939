"""OpenAI-compatible /v1/completions and /v1/chat/completions (plus the `speculation` extra field)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request

from specserve.decoding.row import Row
from specserve.server.deps import State, check_model, encode_prompt, require_key, sse
from specserve.server.errors import APIError, error_body
from specserve.server.generation import build_rows, new_id, run_to_end, stream_choices, submit
from specserve.server.logprobs import TokenText, chat_logprobs, completion_logprobs
from specserve.server.schemas import ChatRequest, CompletionRequest, Speculation
from specserve.server.text import TextStream

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


def usage(rows: list[Row]) -> dict:
    """Prompt tokens once, completion tokens over every choice (as OpenAI counts n > 1)."""
    s = rows[0].stats
    completion = sum(r.stats.completion_tokens for r in rows)
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": s.prompt_tokens + completion,
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


class Logprobs:
    """Each choice's logprobs, in the route's format, for the tokens it has emitted since the last call."""

    def __init__(self, kind: str, rows: list[Row], tokenizer) -> None:
        self.kind, self.rows, self.text = kind, rows, TokenText(tokenizer)
        self.seen = [0] * len(rows)  # tokens already reported, per choice
        self.offset = [0] * len(rows)  # characters before them (completions' text_offset)

    def next(self, i: int, n_tokens: int) -> dict | None:
        row = self.rows[i]
        if row.sampling.logprobs is None:
            return None
        entries = row.logprobs[self.seen[i] : self.seen[i] + n_tokens]
        self.seen[i] += len(entries)
        if self.kind == "chat.completion":
            return chat_logprobs(self.text, entries)
        out = completion_logprobs(self.text, entries, self.offset[i])
        self.offset[i] += sum(len(t) for t in out["tokens"])
        return out


async def _stream(kind: str, cid: str, created: int, model: str, body, state, rows: list[Row], streams):
    """Chunks in OpenAI's format for `kind` "text_completion" or "chat.completion", one choice per
    chunk (tagged by `index` when n > 1)."""
    queues = submit(state.service, rows)  # before the 200: a full queue is still a plain 429
    obj = f"{kind}.chunk" if kind == "chat.completion" else kind
    logprobs = Logprobs(kind, rows, state.target.tokenizer)

    def chunk(i: int, delta: str | None, finish: str | None, lp: dict | None, first: bool = False) -> dict:
        if kind == "chat.completion":
            d = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {})
            choice = {"index": i, "delta": d, "finish_reason": finish, "logprobs": lp}
        else:
            choice = {"index": i, "text": delta or "", "finish_reason": finish, "logprobs": lp}
        return {"id": cid, "object": obj, "created": created, "model": model, "choices": [choice]}

    async def events() -> AsyncIterator[dict]:
        if kind == "chat.completion":
            for i in range(len(rows)):
                yield chunk(i, None, None, None, first=True)
        async for i, delta, tokens, finish in stream_choices(state.service, rows, streams, queues):
            if finish in ("timeout", "error"):
                status = 504 if finish == "timeout" else 500
                yield error_body(status, f"generation ended early: {finish}")
                return
            lp = logprobs.next(i, len(tokens))
            if delta or finish or lp:
                out = chunk(i, delta, finish, lp)
                if finish:
                    out["speculation"] = rows[i].stats.to_dict()
                yield out
        if body.stream_options and body.stream_options.include_usage:
            yield {"id": cid, "object": obj, "created": created, "model": model, "choices": [],
                   "usage": usage(rows)}  # fmt: skip

    return sse(events())


async def _respond(kind: str, body, prompt_ids: list[int], max_tokens: int | None, request: Request, state):
    """Shared by both routes: build a row per choice, then stream them or answer with every choice."""
    spec = body.speculation or Speculation()
    rows = build_rows(state, request, prompt_ids, body, max_tokens, spec.method, spec.num_speculative_tokens)
    streams = [TextStream(state.target.tokenizer, body.stop) for _ in rows]
    cid, created = new_id("chatcmpl" if kind == "chat.completion" else "cmpl"), int(time.time())
    if body.stream:
        return await _stream(kind, cid, created, body.model, body, state, rows, streams)
    outs = await run_to_end(request, state.service, rows, streams)
    logprobs = Logprobs(kind, rows, state.target.tokenizer)
    choices = []
    for i, out in enumerate(outs):
        if kind == "chat.completion":
            choice = {"index": i, "message": {"role": "assistant", "content": out.text}}
        else:
            choice = {"index": i, "text": out.text}
        choice |= {"finish_reason": out.finish_reason, "logprobs": logprobs.next(i, len(out.row.logprobs))}
        if len(outs) > 1:
            choice["speculation"] = out.row.stats.to_dict()
        choices.append(choice)
    return {
        "id": cid,
        "object": kind,
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": usage(rows),
        "speculation": rows[0].stats.to_dict(),  # the first choice's (each choice carries its own when n > 1)
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
