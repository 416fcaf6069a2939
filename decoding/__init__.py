"""Pure decoding: sampling, acceptance, batched KV bookkeeping, one file per proposer.

Glossary (as in vLLM's rejection sampler and Leviathan et al. 2023):
- p: the target model's distribution, q: the draft's;
- candidate / draft token: a proposed token awaiting verification;
- accepted: a candidate the target agreed with; recovered: the token emitted in place of the first
  rejected candidate; bonus: the token emitted after all candidates were accepted;
- pending: a row's last token, emitted but not yet fed to the target (its cache holds the rest).

Shape legend: B rows in a batch, K candidates per row (at most), T = K + 1 tokens verified per row,
V vocabulary, L cache columns (shared by all rows; a row's rejected columns stay as masked holes),
H heads, D head size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from specserve.decoding.params import METHODS, SamplingParams, SpecParams
from specserve.decoding.stats import RequestStats, StepStats

if TYPE_CHECKING:
    from specserve.decoding.engine import Engine, GenerationResult


def __getattr__(name: str):
    """The engine loads torch and transformers: imported on first use, so that the parameters and
    statistics (and the command line that names them) stay light."""
    if name in ("Engine", "GenerationResult"):
        from specserve.decoding import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METHODS",
    "Engine",
    "GenerationResult",
    "RequestStats",
    "SamplingParams",
    "SpecParams",
    "StepStats",
]
