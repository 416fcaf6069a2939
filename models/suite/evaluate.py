"""Measure a suite: validation loss of each model, and the draft's greedy acceptance against the target
through the decoding engine (speculation with K draft tokens on held-out code)."""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.models.suite.configs import EvalConfig
from specserve.models.suite.train import TokenWindows, evaluate_loss

log = logging.getLogger(__name__)


@dataclass
class AcceptanceStats:
    prompts: int
    prompt_len: int
    new_tokens: int
    num_speculative_tokens: int
    draft_tokens: int
    accepted_tokens: int
    completion_tokens: int
    target_forwards: int
    wall_s: float

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted candidates, summed over all requests."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.completion_tokens / self.target_forwards if self.target_forwards else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_forward": self.tokens_per_forward,
        }


def load_float32(path: Path) -> PreTrainedModel:
    """A bundled (bf16) model as float32 for evaluation, the way the server loads it by default."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    return model


def acceptance_prompts(val: TokenWindows, cfg: EvalConfig) -> list[list[int]]:
    """Held-out prompts: evenly spaced validation windows, cut to prompt_len."""
    return val.evenly(cfg.accept_prompts)[:, : cfg.prompt_len].tolist()


def measure_acceptance(
    target: PreTrainedModel, draft: PreTrainedModel, prompts: list[list[int]], cfg: EvalConfig, eos_id: int
) -> AcceptanceStats:
    """Greedy speculative decoding of every prompt; acceptance = sum accepted / sum drafted."""
    engine = Engine(target, draft, eos_token_ids=(eos_id,), max_batch_size=cfg.batch_size)
    t0 = time.perf_counter()
    results = engine.generate(
        prompts,
        SamplingParams(max_new_tokens=cfg.new_tokens, ignore_eos=True),
        SpecParams("draft", cfg.num_speculative_tokens),
    )
    stats = AcceptanceStats(
        prompts=len(prompts),
        prompt_len=cfg.prompt_len,
        new_tokens=cfg.new_tokens,
        num_speculative_tokens=cfg.num_speculative_tokens,
        draft_tokens=sum(r.stats.draft_tokens for r in results),
        accepted_tokens=sum(r.stats.accepted_tokens for r in results),
        completion_tokens=sum(r.stats.completion_tokens for r in results),
        target_forwards=sum(r.stats.target_forwards for r in results),
        wall_s=time.perf_counter() - t0,
    )
    log.info(
        "acceptance %.3f (%d/%d drafted), %.2f tokens per target forward",
        stats.acceptance_rate,
        stats.accepted_tokens,
        stats.draft_tokens,
        stats.tokens_per_forward,
    )
    return stats


def val_sample(val: TokenWindows, cfg: EvalConfig) -> torch.Tensor:
    """The validation windows the reported loss is measured on ([val_windows, T])."""
    return val.evenly(cfg.val_windows)


def write_val_sample(windows: torch.Tensor, path: Path) -> None:
    """Ship the first few validation windows' token ids, so a test can re-check the recorded loss."""
    path.write_text(json.dumps({"seq_len": windows.shape[1], "token_ids": windows.tolist()}))


def read_val_sample(path: Path) -> torch.Tensor:
    return torch.tensor(json.loads(path.read_text())["token_ids"], dtype=torch.long)


def model_losses(model: PreTrainedModel, windows: torch.Tensor, sample_windows: int, batch_size: int) -> dict:
    """Validation loss on all windows and on the shipped sample (its first `sample_windows`)."""
    return {
        "val_loss": evaluate_loss(model, windows, batch_size),
        "val_sample_loss": evaluate_loss(model, windows[:sample_windows], batch_size),
    }


@torch.no_grad()
def decode_step_ms(model: PreTrainedModel, context: int = 128, reps: int = 30) -> float:
    """Median milliseconds of one batch-1 decode forward (one new token over a cached context)."""
    device = next(model.parameters()).device
    context = min(context, model.config.max_position_embeddings - 1)
    ids = torch.zeros(1, context, dtype=torch.long, device=device)  # [1, context]
    times = []
    for _ in range(reps):
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, cache=cache, use_cache=True)
        t0 = time.perf_counter()
        model(input_ids=ids[:, :1], cache=cache, use_cache=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)
