"""Server settings: flags, `SPECSERVE_*` environment variables, and their cross-field rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeInt, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from specserve.decoding.params import MAX_SPECULATIVE_TOKENS
from specserve.models.suite_paths import default_suite


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPECSERVE_", extra="forbid")

    target: str | None = Field(None, description="target model (Hub id or path); default: the bundled suite")
    draft: str | None = Field(None, description="draft model for method 'draft'")
    medusa: str | None = Field(None, description="Medusa heads folder for method 'medusa'")
    eagle: str | None = Field(None, description="EAGLE head folder for method 'eagle'")
    method: Literal["none", "draft", "ngram", "medusa", "eagle"] | None = Field(
        None, description="default method (per-request override allowed); default: draft if loaded, else none"
    )
    num_speculative_tokens: Annotated[int, Field(ge=1, le=MAX_SPECULATIVE_TOKENS)] | Literal["auto"] = Field(
        "auto", description="K per step, or auto: chosen per step"
    )
    speculation_schedule: Annotated[dict[str, dict[int, NonNegativeInt]] | None, NoDecode] = Field(
        None,
        description='K for "auto" by method and smallest batch size, JSON or a JSON file: {"draft": {"1": 3, '
        '"9": 0}} ("*": every method); default: measured (decoding/policy.py)',
    )
    max_batch_size: int = Field(32, ge=1, le=512)
    max_waiting: int = Field(64, ge=0, le=100_000, description="queued requests beyond this get 429")
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    eagle_dtype: Literal["auto", "float32", "float64", "bfloat16", "float16"] = Field(
        "auto",
        description="the EAGLE head's precision; auto: bfloat16 for a float32 target on a CPU "
        "with native bfloat16, else dtype's (lossless at any)",
    )
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    served_model_name: str | None = None
    trust_remote_code: bool = False
    threads: int = Field(0, ge=0, description="torch CPU threads (0: on CPU tuned per batch size)")
    prefix_cache_mb: float = Field(
        256.0, ge=0, description="MiB of prompt keys/values kept per model (prompts that start alike); 0: off"
    )
    metrics: bool = Field(True, description="record Prometheus metrics and per-request bytes/FLOPs")
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="compiled decode steps: on, off, or auto (kept where a warm-up measures them faster)",
    )
    compile_cache: str | None = Field(
        None, description="inductor's cache of compiled graphs (default ~/.cache)"
    )
    idle_warm_up: bool = Field(
        True,
        description="while no request is in flight, compile and time what start-up leaves (graphs for "
        "batches, step costs at larger batch sizes, the other methods'); off: each when first needed",
    )
    peak_bandwidth: float | None = Field(
        None, gt=0, description="device peak bytes/s (default: table or probe)"
    )
    peak_flops: float | None = Field(None, gt=0, description="device peak FLOP/s (default: table or probe)")
    max_body_bytes: int = Field(1 << 20, ge=1024)
    request_timeout_s: float = Field(600.0, gt=0, description="a request still running after this is dropped")
    shutdown_timeout_s: float = Field(30.0, ge=0, description="SIGTERM: time given to requests in flight")

    @field_validator("speculation_schedule", mode="before")
    @classmethod
    def _schedule_json(cls, value: Any) -> Any:
        """A flag's or an environment variable's text: JSON, or the path of a JSON file."""
        if isinstance(value, str) and not value.lstrip().startswith("{") and Path(value).is_file():
            value = Path(value).read_text()
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("speculation_schedule")
    @classmethod
    def _schedule(cls, schedule: dict[str, dict[int, int]] | None) -> dict[str, dict[int, int]] | None:
        if schedule is not None and not schedule:
            raise ValueError('expected a method\'s batch sizes and K, such as {"draft": {"1": 3, "9": 0}}')
        for method, table in (schedule or {}).items():
            if not table or min(table) != 1:
                raise ValueError(f"schedule for {method!r} must start at batch size 1")
        return schedule and {method: dict(sorted(table.items())) for method, table in schedule.items()}

    @model_validator(mode="after")
    def _resolve_models(self) -> Settings:
        if self.target is None:  # the bundled suite brings its own draft
            suite = default_suite()
            if suite is None:
                raise ValueError(
                    "no target model: pass --target (the bundled default suite is not installed)"
                )
            self.target = suite["target"]
            self.draft = self.draft or suite.get("draft")
            self.medusa = self.medusa or suite.get("medusa")
            self.eagle = self.eagle or suite.get("eagle")
            self.served_model_name = self.served_model_name or "specserve-default-suite"
        if self.method is None:
            self.method = "draft" if self.draft else "none"
        if self.method == "draft" and not self.draft:
            raise ValueError("method 'draft' needs a draft model: pass --draft")
        if self.method == "medusa" and not self.medusa:
            raise ValueError("method 'medusa' needs Medusa heads: pass --medusa")
        if self.method == "eagle" and not self.eagle:
            raise ValueError("method 'eagle' needs an EAGLE head: pass --eagle")
        return self

    @property
    def model_name(self) -> str:
        return self.served_model_name or str(self.target)
