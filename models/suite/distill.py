"""DistillSpec (Zhou et al. 2023): align the draft with the target on text the target writes itself.

1. the target continues corpus prompts (its own outputs: the states speculative decoding visits);
2. the draft is trained on those sequences to match the target's full next-token distribution,
   forward KL(p || q) with p the target, q the draft, at every position;
3. the caller keeps the distilled draft only if its measured acceptance rate rises.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel

from specserve.models.suite.configs import DistillConfig
from specserve.models.suite.train import TokenWindows, TrainResult, train_loop

log = logging.getLogger(__name__)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """[B, V] logits -> [B, 1] tokens: argmax at temperature 0, else one draw from softmax(logits / T).

    The draw is an exponential race (argmax of p / E, E ~ Exp(1): the Gumbel-max trick), so it runs on
    the logits' device; a CPU multinomial over [512, 8192] took ~100 ms per step."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(logits / temperature, dim=-1)  # [B, V]
    race = torch.empty_like(probs).exponential_(generator=generator)  # [B, V]
    return (probs / race).argmax(-1, keepdim=True)


@torch.no_grad()
def continue_prompts(
    model: PreTrainedModel,
    prompts: torch.Tensor,
    new_tokens: int,
    temperature: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """[B, P] prompts -> [B, P + new_tokens]: the model's own continuations (greedy at temperature 0)."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)  # filled in place by each forward
    logits = model(input_ids=prompts.to(device), cache=cache, use_cache=True).logits[:, -1].float()  # [B, V]
    tokens = [prompts.to(device)]
    for _ in range(new_tokens):
        nxt = sample_tokens(logits, temperature, generator)  # [B, 1]
        tokens.append(nxt)
        logits = model(input_ids=nxt, cache=cache, use_cache=True).logits[:, -1].float()
    return torch.cat(tokens, dim=1).cpu()


def build_pool(
    target: PreTrainedModel, train: TokenWindows, cfg: DistillConfig, pool_path: Path
) -> torch.Tensor:
    """The target's continuations of cfg.num_sequences training prompts ([N, P + new]), cached on disk."""
    if pool_path.is_file():
        pool = torch.load(pool_path)
        if pool.shape == (cfg.num_sequences, cfg.prompt_len + cfg.new_tokens):
            log.info("distill: reusing %d target continuations from %s", len(pool), pool_path)
            return pool
    gen = torch.Generator(device=next(target.parameters()).device).manual_seed(cfg.train.seed)
    target.eval()
    chunks = []
    for i in tqdm(range(0, cfg.num_sequences, cfg.gen_batch_size), desc="target writes", unit="batch"):
        n = min(cfg.gen_batch_size, cfg.num_sequences - i)
        prompts = train.batch(cfg.train.seed + 10_000, i, n)[:, : cfg.prompt_len]  # [n, P]
        chunks.append(continue_prompts(target, prompts, cfg.new_tokens, cfg.temperature, gen))
    pool = torch.cat(chunks)  # [N, P + new]
    pool_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pool, pool_path)
    return pool


def kd_loss_fn(teacher: PreTrainedModel):
    """Forward KL(p_target || q_draft) per position, averaged over positions."""

    def loss(student: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p_log = F.log_softmax(teacher(input_ids=ids).logits.float(), dim=-1)  # [B, T, V]
        q_log = F.log_softmax(student(input_ids=ids).logits.float(), dim=-1)  # [B, T, V]
        return F.kl_div(q_log, p_log, log_target=True, reduction="none").sum(-1).mean()

    return loss


def distill_draft(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    pool: torch.Tensor,
    cfg: DistillConfig,
    val_windows: torch.Tensor,
    work_dir: Path,
    resume: bool = True,
    data_id: str = "",
    bf16: bool = False,
) -> TrainResult:
    """Train `draft` in place on the pool ([N, T] target continuations) to match the target's distribution.

    The validation loss it reports is the draft's own next-token loss on the corpus.
    """
    if cfg.train.seq_len != pool.shape[1]:
        raise ValueError(f"distill seq_len {cfg.train.seq_len} must equal the pool's length {pool.shape[1]}")
    target.requires_grad_(False)

    def batch_fn(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)  # a pure function of step
        return pool[torch.randint(0, len(pool), (cfg.train.batch_size,), generator=g)]

    loss_fn = kd_loss_fn(target)
    return train_loop(
        "distill",
        draft,
        cfg.train,
        batch_fn,
        val_windows,
        work_dir,
        loss_fn=loss_fn,
        resume=resume,
        data_id=data_id,
        bf16=bf16,
    )
