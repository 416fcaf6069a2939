"""What the app keeps on `app.state.specserve` once the lifespan has loaded the models."""

from __future__ import annotations

from dataclasses import dataclass

from specserve.decoding import Engine
from specserve.metrics.prometheus import ServerMetrics
from specserve.models.loading import LoadedModel
from specserve.server.service import EngineService
from specserve.server.settings import Settings


@dataclass
class ServerState:
    settings: Settings
    target: LoadedModel
    draft: LoadedModel | None
    engine: Engine
    service: EngineService
    metrics: ServerMetrics
    created: int  # unix time the models were loaded (OpenAI's `created`)
    ready: bool = False  # warmed up and the engine thread started: requests are taken
