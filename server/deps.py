"""FastAPI dependencies: the loaded state, the API key, the model name, prompt encoding, SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import StreamingResponse

from specserve.server.errors import APIError, check_api_key
from specserve.server.state import ServerState


async def get_loaded(request: Request) -> ServerState:
    """The models are loaded (the engine may still be warming up). `async def`, as every
    dependency here: FastAPI runs a plain `def` one in a worker thread."""
    state = getattr(request.app.state, "specserve", None)
    if state is None:
        raise APIError(503, "models are still loading", headers={"Retry-After": "5"})
    return state


async def get_state(state: Annotated[ServerState, Depends(get_loaded)]) -> ServerState:
    """Ready for requests: loaded, warmed up, the engine thread running."""
    if not state.ready:
        raise APIError(
            503, "the server is warming up (compiling its decode steps)", headers={"Retry-After": "5"}
        )
    return state


Loaded = Annotated[ServerState, Depends(get_loaded)]
State = Annotated[ServerState, Depends(get_state)]


async def require_key(state: Loaded, authorization: Annotated[str | None, Header()] = None) -> None:
    key = state.settings.api_key
    check_api_key(key.get_secret_value() if key else None, authorization)


def check_model(state: ServerState, name: str | None) -> str:
    """The model name to answer with: the served one when the request names none; 404 for a name
    this server does not serve."""
    if name is None:
        return state.settings.model_name
    known = {state.settings.model_name, str(state.settings.target), state.target.local_path}
    if name not in known:
        raise APIError(
            404,
            f"model {name!r} does not exist; this server serves {state.settings.model_name!r}",
            "model",
            "model_not_found",
        )
    return name


def encode_prompt(state: ServerState, prompt: str | list[str] | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return state.target.tokenizer.encode(prompt)
    if prompt and all(isinstance(x, str) for x in prompt):
        if len(prompt) != 1:
            raise APIError(400, f"{len(prompt)} prompts in one request are not supported; send one", "prompt")
        return state.target.tokenizer.encode(prompt[0])
    return list(prompt)


def sse(events: AsyncIterator[dict]) -> StreamingResponse:
    """Server-sent events in OpenAI's framing: `data: <json>` per event, then `data: [DONE]`."""

    async def frames() -> AsyncIterator[str]:
        async for obj in events:
            yield f"data: {json.dumps(obj)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(frames(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
