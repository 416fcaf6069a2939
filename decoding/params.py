"""Sampling and speculation parameters, validated before any work is done."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("none", "draft", "ngram", "medusa", "eagle")
MAX_SPECULATIVE_TOKENS = 16  # beyond this the verify forward costs more than any acceptance repays
AUTO_MAX_TOKENS = 6  # "auto" chooses K in 0..this each step
MAX_TOP_LOGPROBS = 20  # most alternatives a token's logprobs may list (OpenAI's top_logprobs limit)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature 0 means greedy; top_k 0 and top_p 1 switch those filters off."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; n: each emitted token's logprob and the n most likely

    def __post_init__(self) -> None:
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {self.logprobs}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class SpecParams:
    """Which proposer a request uses and how many tokens it may propose per step."""

    method: str = "none"
    num_speculative_tokens: int = 4
    ngram_max: int = 4  # prompt lookup tries suffixes of this many tokens first ...
    ngram_min: int = 1  # ... down to this many
    adaptive: bool = False  # choose K per step up to num_speculative_tokens ("auto")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        k = self.num_speculative_tokens
        if self.method != "none" and not 1 <= k <= MAX_SPECULATIVE_TOKENS:
            raise ValueError(f"num_speculative_tokens must be in 1..{MAX_SPECULATIVE_TOKENS}, got {k}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min}, {self.ngram_max}")

    @classmethod
    def parse(cls, method: str, k: int | str | None, default: int | str = "auto") -> SpecParams:
        """K as a number, or "auto" (adaptive, up to AUTO_MAX_TOKENS); None takes the default."""
        k = default if k is None else k
        if k == "auto":
            return cls(method, AUTO_MAX_TOKENS, adaptive=True)
        if isinstance(k, str) and not k.isdigit():
            raise ValueError(f"num_speculative_tokens must be a number or 'auto', got {k!r}")
        return cls(method, int(k))

    @property
    def k(self) -> int:
        return 0 if self.method == "none" else self.num_speculative_tokens

    def step_k(self, k_auto: int | None) -> int:
        """K for one step: the policy's choice for adaptive rows, else the request's own K."""
        if not self.adaptive:
            return self.k
        return self.k if k_auto is None else k_auto
