"""A row: one request's decoding state inside a batch."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import torch

from specserve.decoding.params import SamplingParams, SpecParams
from specserve.decoding.sampling import UniformStream
from specserve.decoding.stats import RequestStats


@dataclass
class TokenLogprob:
    """An emitted token's log-probability and its row's `logprobs` most likely alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token, logprob), most likely first


@dataclass
class Row:
    request_id: str
    tokens: list[int]  # prompt + generated; the last one is pending (not yet in the target's cache)
    prompt_len: int
    sampling: SamplingParams
    spec: SpecParams
    stop_ids: frozenset[int]  # EOS (unless ignored) and the request's stop token ids
    max_len: int  # context limit of the models this row runs on
    generator: torch.Generator | None  # draft sampling and acceptance tests; None for greedy rows
    stream: UniformStream | None  # uniforms by position for the emitted tokens; None for greedy rows
    stats: RequestStats
    arrival: float = field(default_factory=time.perf_counter)
    admitted: float = 0.0
    deadline: float | None = None  # perf_counter time after which the request is dropped ("timeout")
    finish_reason: str | None = None  # "stop", "length", "abort", "timeout", "error"
    logprobs: list[TokenLogprob] = field(default_factory=list)  # per generated token, if asked

    @classmethod
    def start(
        cls, request_id: str, prompt: list[int], sampling: SamplingParams, spec: SpecParams,
        eos_token_ids: tuple[int, ...], max_len: int,
    ) -> Row:  # fmt: skip
        """A new row for a validated request: its stop ids, and for sampled rows its seeded
        draws (a random seed when the request gave none)."""
        generator, stream = None, None
        if not sampling.greedy:
            seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
            generator = torch.Generator().manual_seed(seed ^ 0x5EED)  # draft sampling / acceptance
            stream = UniformStream(seed)  # the emitted tokens
        stop = set(sampling.stop_token_ids) | (set() if sampling.ignore_eos else set(eos_token_ids))
        return cls(
            request_id=request_id,
            tokens=list(prompt),
            prompt_len=len(prompt),
            sampling=sampling,
            spec=spec,
            stop_ids=frozenset(stop),
            max_len=max_len,
            generator=generator,
            stream=stream,
            stats=RequestStats(method=spec.method, prompt_tokens=len(prompt)),
        )

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def left(self) -> int:
        """Tokens it may still emit before max_new_tokens or the context ends it."""
        return min(self.sampling.max_new_tokens - self.num_generated, self.max_len - len(self.tokens))

    def budget(self, k: int) -> int:
        """Candidates worth proposing: each step emits up to k + 1 tokens; stay inside the context."""
        left = self.sampling.max_new_tokens - self.num_generated
        return max(0, min(k, left - 1, self.max_len - len(self.tokens)))

    def emit(self, new: list[int], logprobs: list[TokenLogprob] | None = None) -> list[int]:
        """Append tokens until a stop: EOS/stop id (kept, then stop), max_new_tokens or context full
        (with their logprobs, when the row asked for them)."""
        out: list[int] = []
        for t in new:
            self.tokens.append(t)
            out.append(t)
            if t in self.stop_ids:
                self.finish_reason = "stop"
            elif self.num_generated >= self.sampling.max_new_tokens or len(self.tokens) >= self.max_len:
                self.finish_reason = "length"
            if self.finish_reason:
                break  # tokens after a stop inside an accepted run are discarded
        self.stats.completion_tokens += len(out)
        if logprobs is not None:
            self.logprobs += logprobs[: len(out)]
        return out
