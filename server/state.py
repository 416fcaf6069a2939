"""What the app keeps on `app.state.specserve` once the lifespan has loaded the models."""

from __future__ import annotations

from dataclasses import dataclass

from decoding import Engine
from metrics.prometheus import ServerMetrics
from models import LoadedModel
from server.service import EngineService
from server.settings import Settings


@dataclass
class ServerState:
    settings: Settings
    target: LoadedModel
    draft: LoadedModel | None
    engine: Engine
    service: EngineService
    metrics: ServerMetrics
    created: int  # unix time the models were loaded (OpenAI's `created`)
