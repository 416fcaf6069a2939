"""One training loop for the target, the draft and the distillation: AdamW, linear warm-up then cosine,
gradient clipping, bf16 autocast on GPU, periodic validation loss, atomic checkpoints, fixed seeds.

Batches are a pure function of (seed, step), so a run stopped at any checkpoint and started again
resumes where it stopped and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel

from specserve.models.suite.configs import TrainConfig

log = logging.getLogger(__name__)

BatchFn = Callable[[int], torch.Tensor]  # step -> [B, T] token ids
LossFn = Callable[[PreTrainedModel, torch.Tensor], torch.Tensor]  # (model, [B, T]) -> scalar


class TokenWindows:
    """Fixed-length windows of a 1-D token array: random ones for training, evenly spaced for validation."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        if len(tokens) < seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens are too few for windows of {seq_len}")
        self.tokens, self.seq_len = tokens, seq_len

    def batch(self, seed: int, step: int, batch_size: int) -> torch.Tensor:
        rng = np.random.default_rng([seed, step])  # a pure function of (seed, step): resumable
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=batch_size)
        return self._gather(starts)

    def evenly(self, n: int) -> torch.Tensor:
        starts = np.linspace(0, len(self.tokens) - self.seq_len, num=n).astype(np.int64)
        return self._gather(starts)

    def _gather(self, starts: np.ndarray) -> torch.Tensor:
        rows = [np.asarray(self.tokens[s : s + self.seq_len], dtype=np.int64) for s in starts]
        return torch.from_numpy(np.stack(rows))  # [B, T]


@dataclass
class TrainResult:
    name: str
    steps: int
    tokens_seen: int
    wall_s: float  # summed over resumed runs
    final_val_loss: float
    resumed_from: int = 0
    planned_steps: int = 0  # cfg.steps, or fewer when a time budget shortened the run
    history: list[dict] = field(default_factory=list)  # {"step", "train_loss", "val_loss", "lr"}

    def to_dict(self) -> dict:
        return asdict(self)


def lm_loss(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over a [B, T] batch."""
    logits = model(input_ids=ids).logits[:, :-1].float()  # [B, T-1, V]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def lr_at(step: int, cfg: TrainConfig, total: int | None = None) -> float:
    """Linear warm-up, then cosine down to lr * min_lr_ratio at `total` steps (default cfg.steps)."""
    total = cfg.steps if total is None else total
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX): there bf16 autocast about doubles CPU training speed."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def evaluate_loss(
    model: PreTrainedModel,
    windows: torch.Tensor,
    batch_size: int,
    loss_fn: LossFn = lm_loss,
    bf16: bool = False,
) -> float:
    """Mean loss over [N, T] windows, batch by batch (float32 unless bf16: reported losses are float32)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with _autocast(device, bf16):
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size].to(device)
            total += float(loss_fn(model, chunk)) * len(chunk)
            count += len(chunk)
    model.train(was_training)
    return total / count


def _optimizer(model: PreTrainedModel, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]  # no decay on norms
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    fused = next(model.parameters()).device.type == "cuda"  # one kernel per step on GPU
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused)


class StepBudget:
    """Fits a run into `max_seconds` of wall clock: steps `probe_from`..`probe_to` are timed, then the
    planned steps shrink to what the rest of the budget holds (8% kept for evaluations and
    checkpoints). The caller ends the run at the first step that finds the budget spent (`over`).
    No budget: the plan is the configured steps."""

    RESERVE = 0.92

    def __init__(
        self, max_seconds: float | None, steps: int, start: int, probe_from: int = 5, probe_to: int = 25
    ) -> None:
        self.max_seconds, self.steps = max_seconds, steps
        self.probe_from, self.probe_to = start + probe_from, start + probe_to
        self.t_probe = 0.0
        self.decided = max_seconds is None  # the plan is final (a resumed run may keep it)

    def keep(self, planned: int) -> None:
        """Take a plan made before (a resumed run's) instead of probing again."""
        self.steps, self.decided = planned, True

    def over(self, elapsed: float) -> bool:
        return self.max_seconds is not None and elapsed >= self.max_seconds

    def plan(self, step: int, elapsed: float) -> int:
        """The planned number of steps, asked before `step` runs, `elapsed` seconds into the budget."""
        if self.decided:
            return self.steps
        if step == self.probe_from:
            self.t_probe = elapsed
        elif step == self.probe_to:
            per_step = (elapsed - self.t_probe) / (self.probe_to - self.probe_from)
            fit = step + int(self.RESERVE * max(0.0, self.max_seconds - elapsed) / per_step)
            if fit < self.steps:
                log.info(
                    "time budget %.0f s at %.1f ms/step: %d steps instead of %d",
                    self.max_seconds,
                    per_step * 1e3,
                    fit,
                    self.steps,
                )
                self.steps = max(fit, step + 1)
            self.decided = True
        return self.steps


def _save_ckpt(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a run killed mid-save keeps the previous checkpoint


def train_loop(
    name: str,
    model: PreTrainedModel,
    cfg: TrainConfig,
    batch_fn: BatchFn,
    val_windows: torch.Tensor,
    ckpt_dir: Path,
    *,
    loss_fn: LossFn = lm_loss,
    val_loss_fn: LossFn = lm_loss,
    resume: bool = True,
    stop_after: int | None = None,
    data_id: str = "",
    bf16: bool = False,
) -> TrainResult:
    """Train `model` in place for cfg.steps, checkpointing to ckpt_dir/ckpt.pt.

    A checkpoint resumes only with the same configuration and `data_id` (what the tokens mean: the
    recipe passes the tokenizer's digest); otherwise training starts afresh. `bf16`: autocast matmuls
    to bfloat16 (weights, optimizer state and reported losses stay float32).

    `stop_after` ends this call after that many steps of this run (an interruption, for tests); the
    next call with resume=True continues from the last checkpoint.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / "ckpt.pt"
    device = next(model.parameters()).device
    opt = _optimizer(model, cfg)
    result = TrainResult(name, 0, 0, 0.0, float("nan"))
    state = (
        torch.load(ckpt_path, map_location=device, weights_only=False)
        if resume and ckpt_path.is_file()
        else None
    )
    if state is not None and (state.get("config"), state.get("data_id")) != (asdict(cfg), data_id):
        log.warning("%s: %s was written with another configuration or data; starting afresh", name, ckpt_path)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        result = TrainResult(**state["result"])
        result.resumed_from = result.steps
        log.info("%s: resuming from step %d of %d (%s)", name, result.steps, cfg.steps, ckpt_path)
    model.train()
    tokens_per_step = cfg.batch_size * cfg.seq_len
    start_step, t0, wall0 = result.steps, time.perf_counter(), result.wall_s
    budget = StepBudget(cfg.max_seconds, cfg.steps, start_step)
    if result.planned_steps:  # a resumed run keeps the plan it made (recorded once final)
        budget.keep(result.planned_steps)
    bar = tqdm(total=cfg.steps, initial=start_step, desc=f"train {name}", unit="step", mininterval=5)
    loss_sum, loss_n = 0.0, 0
    for step in range(start_step, cfg.steps):
        total = budget.plan(step, wall0 + time.perf_counter() - t0)
        result.planned_steps = total if budget.decided else 0
        if step >= total:  # a resumed run that had already reached its plan
            break
        if stop_after is not None and step - start_step >= stop_after:
            log.info("%s: stopping after %d steps (at step %d) as asked", name, stop_after, step)
            break
        if bar.total != total:
            bar.total = total
        lr = lr_at(step, cfg, total)
        for group in opt.param_groups:
            group["lr"] = lr
        ids = batch_fn(step).to(device)
        with _autocast(device, bf16):
            loss = loss_fn(model, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        result.steps, result.tokens_seen = step + 1, result.tokens_seen + tokens_per_step
        last = step + 1 >= total or budget.over(wall0 + time.perf_counter() - t0)
        if last:  # the run ends here, also when the budget ran out before the plan did
            total = result.planned_steps = step + 1
        if (step + 1) % cfg.eval_every == 0 or last:
            val = evaluate_loss(model, val_windows, cfg.batch_size, val_loss_fn, bf16=bf16)
            result.history.append(
                {"step": step + 1, "train_loss": loss_sum / loss_n, "val_loss": val, "lr": lr}
            )
            result.final_val_loss = val
            log.info(
                "%s step %d/%d: train loss %.4f, val loss %.4f, lr %.2e, %.0f tok/s",
                name,
                step + 1,
                total,
                loss_sum / loss_n,
                val,
                lr,
                (step + 1 - start_step) * tokens_per_step / (time.perf_counter() - t0),
            )
            loss_sum, loss_n = 0.0, 0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if (step + 1) % cfg.ckpt_every == 0 or last:
            result.wall_s = wall0 + time.perf_counter() - t0
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "result": asdict(result)}
            _save_ckpt(ckpt_path, state | {"config": asdict(cfg), "data_id": data_id})
        if last:
            break
    bar.close()
    result.wall_s = wall0 + time.perf_counter() - t0
    model.eval()
    return result


def save_hf(model: PreTrainedModel, tokenizer, out_dir: Path, max_shard_size: str) -> None:
    """Save as a Hugging Face folder: bf16 safetensors in shards, generation config, tokenizer files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id
    )
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(str(out_dir), max_shard_size=max_shard_size)
    tokenizer.save_pretrained(str(out_dir))
