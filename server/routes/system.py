"""Health, model list and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from specserve.server.deps import Loaded, require_key

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = getattr(request.app.state, "specserve", None)
    if state is None or not state.ready or not state.service.accepting:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    # ready; what start-up left for idle time (graphs for batches, other methods) may still run
    return JSONResponse({"status": "ok", "warm_up_tasks_left": state.service.idle_left})


@router.get("/v1/models", dependencies=[Depends(require_key)])
async def models(state: Loaded) -> dict:
    s = state.settings
    return {
        "object": "list",
        "data": [
            {
                "id": s.model_name,
                "object": "model",
                "created": state.created,
                "owned_by": "specserve",
                "root": state.target.local_path,
                "parent": None,
                "max_model_len": state.target.context_length,
                "draft": state.draft.local_path if state.draft else None,
                "medusa": s.medusa,
                "eagle": s.eagle,
                "methods": list(state.engine.methods),
                "default_method": s.method,
                "num_speculative_tokens": s.num_speculative_tokens,
            }
        ],
    }


@router.get("/metrics")
async def metrics(state: Loaded) -> Response:
    m = state.metrics
    m.running.set(state.service.num_running)
    m.waiting.set(state.service.num_waiting)
    m.kv_bytes.set(state.engine.kv_bytes())
    m.prefix_bytes.set(sum(c.nbytes for c in state.engine.prefix.values()))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
