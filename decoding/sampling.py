"""Logits -> probabilities with per-row temperature / top-k / top-p, and sampling from uniforms.

Sampling takes its randomness as explicit uniforms drawn from each row's own generator, so a seeded
request draws the same numbers whatever else shares its batch, and acceptance stays vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from specserve.decoding.params import SamplingParams


@dataclass
class Warp:
    """Per-row sampling filters as tensors, built once per step for the rows being decoded."""

    temperature: torch.Tensor  # [B] (greedy rows carry 1.0; their probabilities are never used)
    top_k: torch.Tensor  # [B] long, 0 = off
    top_p: torch.Tensor  # [B], 1.0 = off
    greedy: torch.Tensor  # [B] bool
    sampled: torch.Tensor = field(init=False)  # [S] the rows that sample (not greedy), in order
    filtered: bool = field(init=False)  # some row has a top-k or top-p

    def __post_init__(self) -> None:
        self.sampled = (~self.greedy).nonzero().squeeze(1)
        self.filtered = bool((self.top_k > 0).any()) or bool((self.top_p < 1).any())

    @property
    def any_sampled(self) -> bool:
        return len(self.sampled) > 0

    @cached_property
    def of_sampled(self) -> Warp:
        """The sampled rows' filters ([S] each): what a step's sampling work runs over, so one
        sampled row among many costs one row's sampling, not the batch's."""
        return self.select(self.sampled)

    @classmethod
    def from_params(cls, params: list[SamplingParams], device: torch.device) -> Warp:
        return cls(
            temperature=torch.tensor([p.temperature or 1.0 for p in params], device=device),
            top_k=torch.tensor([p.top_k for p in params], device=device),
            top_p=torch.tensor([p.top_p for p in params], device=device),
            greedy=torch.tensor([p.greedy for p in params], device=device),
        )

    def select(self, rows: torch.Tensor) -> Warp:
        return Warp(self.temperature[rows], self.top_k[rows], self.top_p[rows], self.greedy[rows])


def warp_probs(logits: torch.Tensor, warp: Warp) -> torch.Tensor:
    """Apply temperature, then top-k, then top-p (Hugging Face's order); return probabilities.

    logits: [B, T, V] -> probs [B, T, V] in float32 or wider.
    """
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    x = x / warp.temperature.to(x.dtype)[:, None, None]
    if warp.filtered:
        sorted_x, order = x.sort(dim=-1, descending=True)  # [B, T, V]
        drop = torch.zeros_like(sorted_x, dtype=torch.bool)
        rank = torch.arange(x.shape[-1], device=x.device)
        k = warp.top_k[:, None, None]
        drop |= (k > 0) & (rank >= k)
        sorted_probs = sorted_x.masked_fill(drop, float("-inf")).softmax(-1)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly above each token
        top_p = warp.top_p.to(x.dtype)[:, None, None]
        drop |= (top_p < 1) & (before >= top_p)  # smallest set with mass >= top_p; the top token stays
        x = x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return x.softmax(-1)


def sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: probs [..., V], u [...] uniform in [0, 1) -> token ids [...]."""
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[..., -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


class UniformStream:
    """A row's uniforms indexed by generated-token position: the token emitted at position t is
    always sample(p_t, u_t), whatever K or candidates the step had, so seeded output does not
    depend on the speculation (for `none`, `ngram` and `medusa` it equals plain sampling's)."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.buf = torch.empty(0, dtype=torch.float64)

    def at(self, start: int, n: int) -> torch.Tensor:
        """u for positions start .. start + n - 1 ([n])."""
        if start + n > len(self.buf):
            more = torch.rand(max(start + n - len(self.buf), 64), generator=self.gen, dtype=torch.float64)
            self.buf = torch.cat([self.buf, more])
        return self.buf[start : start + n]


def draw_tokens(
    logits: torch.Tensor, warp: Warp, u: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each row's next token from its logits [B, V]: the argmax for greedy rows, a sample of the
    warped distribution with uniforms u [S] for the sampled rows (`warp.sampled`; u None when
    every row is greedy). Returns the tokens [B] and the sampled rows' distribution [S, V] (a
    drafter's q; None when u is None). A prefill's first token, a plain step's next one and a
    drafter's candidates are all drawn here."""
    c = logits.argmax(-1)  # [B]
    if u is None:
        return c, None
    s = warp.sampled  # [S]
    q = warp_probs(logits.index_select(0, s)[:, None], warp.of_sampled)[:, 0]  # [S, V]
    return c.index_put((s,), sample(q, u)), q


def widen(c: torch.Tensor, q: torch.Tensor | None, vocab: torch.Tensor | None, size: int):
    """A drafter over part of the vocabulary (models/draft_vocab.py): its candidates c [B], indices
    into `vocab` [V'], as token ids, and its q [S, V'] as [S, size], 0 off `vocab`. vocab None:
    unchanged."""
    if vocab is None:
        return c, q
    return vocab[c], None if q is None else q.new_zeros(len(q), size).index_copy_(1, vocab, q)


def position_uniforms(streams: list[UniformStream], starts: list[int], n: int, device) -> torch.Tensor:
    """[S, n]: (sampled) row s's uniforms for positions starts[s] .. + n - 1."""
    rows = [st.at(a, n) for st, a in zip(streams, starts, strict=True)]
    return torch.stack(rows).to(device) if rows else torch.zeros(0, n, dtype=torch.float64, device=device)


def draw_uniforms(generators: list[torch.Generator], n: int, device: torch.device) -> torch.Tensor:
    """n uniforms per (sampled) row from each row's own generator ([S, n])."""
    rows = [torch.rand(n, generator=g, dtype=torch.float64) for g in generators]
    return torch.stack(rows).to(device) if rows else torch.zeros(0, n, dtype=torch.float64, device=device)
