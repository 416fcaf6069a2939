"""Bytes and FLOPs per forward: one source of truth for the Prometheus counters and request stats.

A forward of a model over a batch of B rows reads the weights once and each row's KV cache (every
column attention reads, holes included: they cost bandwidth too). FLOPs are 2 x non-embedding
parameters per token plus attention: 4 x layers x (heads x head size) per token per attended
column (QK^T and AV). A row's share of a forward is weights / B plus its own KV, and its own FLOPs;
rows that fed no tokens to a forward (a lazy draft's prefill of just the rows joining) pay nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from specserve.decoding.row import Row
from specserve.decoding.stats import Forward, StepStats


@dataclass(frozen=True)
class ModelCost:
    name: str  # "target", "draft", "heads" (Medusa) or "eagle"
    weight_bytes: int
    non_embedding_params: int
    kv_bytes_per_token: int  # keys + values of one token over all layers
    attn_flops_per_token_column: int  # 4 x layers x heads x head size

    @classmethod
    def for_model(
        cls, name: str, model: nn.Module, weight_bytes: int, non_embedding_params: int
    ) -> ModelCost:
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        elt = next(model.parameters()).element_size()
        layers = cfg.num_hidden_layers
        return cls(name, weight_bytes, non_embedding_params, 2 * layers * kv_heads * head_dim * elt,
                   4 * layers * cfg.num_attention_heads * head_dim)  # fmt: skip

    @classmethod
    def for_heads(cls, heads: nn.Module) -> ModelCost:
        """Medusa heads: weights only (a shared lm_head is read again by the heads)."""
        params = list({id(p): p for p in heads.parameters()}.values())
        n = sum(p.numel() for p in params)
        return cls("heads", sum(p.numel() * p.element_size() for p in params), n, 0, 0)

    @classmethod
    def for_eagle(cls, head: nn.Module) -> ModelCost:
        """An EAGLE head: fc, its layer and norm, and the target's lm_head it projects with (read
        again every forward); its own cache of one layer."""
        own = head.own_parameters() + list(head.decoder.lm_head.parameters())
        n = sum(p.numel() for p in own)
        base = cls.for_model("eagle", head.decoder, 0, 0)
        return cls("eagle", sum(p.numel() * p.element_size() for p in own), n, base.kv_bytes_per_token,
                   base.attn_flops_per_token_column)  # fmt: skip

    def row_costs(self, f: Forward) -> tuple[list[float], list[float], list[float]]:
        """Per row of the forward: (weight-byte share, KV bytes, FLOPs)."""
        fed = sum(t > 0 for t in f.tokens) or 1
        kv = [float(f.columns * self.kv_bytes_per_token) if t else 0.0 for t in f.tokens]
        flops = [
            2.0 * self.non_embedding_params * t
            + self.attn_flops_per_token_column * t * (f.columns + (t + 1) / 2)
            for t in f.tokens
        ]
        return [self.weight_bytes / fed if t else 0.0 for t in f.tokens], kv, flops


class Accountant:
    """Charges every step's forwards to its rows (RequestStats) and totals them on the StepStats."""

    def __init__(self, costs: dict[str, ModelCost], peak_bytes_per_s: float, peak_flops_per_s: float) -> None:
        self.costs, self.peak_bw, self.peak_flops = costs, peak_bytes_per_s, peak_flops_per_s

    def __call__(self, stats: StepStats, rows: list[Row]) -> None:
        for f in stats.forwards:
            cost = self.costs.get(f.model)
            if cost is None:
                continue
            weights, kv, flops = cost.row_costs(f)
            by_kind = stats.bytes_read.setdefault(f.model, {"weights": 0.0, "kv": 0.0})
            by_kind["weights"] += cost.weight_bytes
            by_kind["kv"] += sum(kv)
            stats.flops[f.model] = stats.flops.get(f.model, 0.0) + sum(flops)
            for row, w, k, fl in zip(rows, weights, kv, flops, strict=True):
                row.stats.bytes_read += w + k
                row.stats.flops += fl
        for row in rows:
            row.stats.peak_bytes_per_s, row.stats.peak_flops_per_s = self.peak_bw, self.peak_flops


def build_accountant(
    target, draft=None, heads: nn.Module | None = None, peaks=None, eagle: nn.Module | None = None
) -> Accountant:
    """An accountant for loaded models (models.LoadedModel), Medusa heads, an EAGLE head and the
    device's peaks (metrics.peaks.Peaks)."""
    costs = {
        "target": ModelCost.for_model(
            "target", target.model, target.weight_bytes, target.non_embedding_params
        )
    }
    if draft is not None:
        costs["draft"] = ModelCost.for_model(
            "draft", draft.model, draft.weight_bytes, draft.non_embedding_params
        )
    if heads is not None:
        costs["heads"] = ModelCost.for_heads(heads)
    if eagle is not None:
        costs["eagle"] = ModelCost.for_eagle(eagle)
    return Accountant(costs, peaks.bytes_per_s if peaks else 0.0, peaks.flops_per_s if peaks else 0.0)
