"""Request bodies (pydantic, with constraints) for the OpenAI routes and /generate."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from specserve.decoding.params import MAX_SPECULATIVE_TOKENS, MAX_TOP_LOGPROBS

MAX_N = 16  # choices per request (each is a row of the batch)
TopN = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]
Method = Literal["none", "draft", "ngram", "medusa", "eagle"]
SpecK = Annotated[int, Field(ge=1, le=MAX_SPECULATIVE_TOKENS)] | Literal["auto"]  # K, or chosen per step


def _encodable(value: object) -> object:
    """JSON may escape a lone UTF-16 surrogate; no tokenizer can encode one (a 400, not a 500)."""
    for part in value if isinstance(value, list) else [value]:
        text = part.get("text") if isinstance(part, dict) else part
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"not valid Unicode text: a lone surrogate at character {e.start}") from None
    return value


class Speculation(BaseModel):
    """Extra field: choose the decoding method per request among those the server loaded."""

    model_config = ConfigDict(extra="forbid")
    method: Method | None = None
    num_speculative_tokens: SpecK | None = None
    logprobs: TopN | None = None  # each token's logprob and this many alternatives, by token id

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields every generation route shares (OpenAI names; top_k, seed and ignore_eos as in vLLM)."""

    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields (user, metadata...) are harmless
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=2**31 - 1)  # bounded: it becomes an int64 tensor in the engine
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_N)  # choices: n rows of one request
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def top_logprobs_wanted(self) -> int | None:
        """None: no logprobs; else how many alternatives per token (each route names it its way)."""
        return None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops


class CompletionRequest(SamplingFields):
    model: str | None = None  # the served model when absent (as vLLM, TGI and llama.cpp)
    prompt: str | list[str] | list[int]
    _prompt_text = field_validator("prompt")(_encodable)
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    logprobs: TopN | None = None  # legacy: the chosen token's logprob and this many alternatives
    best_of: int | None = Field(None, ge=1)
    speculation: Speculation | None = None

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict] | None = None
    _content_text = field_validator("content")(_encodable)


class ChatRequest(SamplingFields):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: TopN | None = None  # alternatives per token; needs logprobs: true
    speculation: Speculation | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class GenerateRequest(SamplingFields):
    """Native route: greedy unless a temperature is given."""

    prompt: str | None = None
    _prompt_text = field_validator("prompt")(_encodable)
    prompt_token_ids: list[int] | None = None
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(64, ge=1)
    method: Method | None = None
    num_speculative_tokens: SpecK | None = None
    logprobs: TopN | None = None  # each token's logprob and this many alternatives, by token id

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs
