"""`specserve train medusa`: Medusa-1 self-distillation of heads on a frozen target.

Head k (0-based) reads the target's final hidden state at position t and learns the target's own
distribution for the token at t + k + 2 (soft cross-entropy against the target's softmax at
t + k + 1), on windows of Python source from this machine (the suite's corpus builder). Validation
reports each head's top-1 / top-5 agreement with the target's argmax; the heads, their config and a
card go to --out.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from specserve.models.loading import load_model
from specserve.models.medusa import MedusaConfig, MedusaHeads
from specserve.models.suite import corpus
from specserve.models.suite.card import hardware
from specserve.models.suite.tokenizer import tokenizer_digest
from specserve.models.suite.train import StepBudget, TokenWindows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MedusaTrainConfig:
    num_heads: int = 3
    num_layers: int = 1
    share_lm_head: bool = False
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1e-3
    warmup_steps: int = 20
    head_decay: float = 0.8  # loss weight of head k is decay ** k (later heads are harder)
    val_windows: int = 32
    val_per_mille: int = 20  # share of corpus files held out for validation
    seed: int = 0
    max_seconds: float | None = None  # wall-clock budget for the steps: fewer when `steps` would not fit


def head_losses(heads: MedusaHeads, hidden: torch.Tensor, p: torch.Tensor) -> list[torch.Tensor]:
    """hidden [B, T, H], target probs p [B, T, V] -> soft cross-entropy per head."""
    logits = heads(hidden)  # [B, T, K, V]
    T = hidden.shape[1]
    out = []
    for k in range(logits.shape[2]):
        pred = logits[:, : T - k - 1, k].float().log_softmax(-1)  # head k at t guesses t + k + 2
        out.append(-(p[:, k + 1 :] * pred).sum(-1).mean())
    return out


@torch.no_grad()
def head_accuracy(target, heads: MedusaHeads, windows: torch.Tensor, batch: int = 8) -> list[dict]:
    """Per head: how often its top-1 / top-5 holds the target's argmax for that position."""
    hits1 = hits5 = None
    n = [0] * heads.config.num_heads
    for i in range(0, len(windows), batch):
        h = target.base_model(input_ids=windows[i : i + batch]).last_hidden_state  # [B, T, H]
        truth = target.get_output_embeddings()(h).argmax(-1)  # [B, T]
        top5 = heads(h).topk(5, dim=-1).indices  # [B, T, K, 5]
        T = h.shape[1]
        if hits1 is None:
            hits1, hits5 = [0] * len(n), [0] * len(n)
        for k in range(len(n)):
            want = truth[:, k + 1 :, None]  # [B, T - k - 1, 1]
            guess = top5[:, : T - k - 1, k]
            hits1[k] += int((guess[..., :1] == want).sum())
            hits5[k] += int((guess == want).any(-1).sum())
            n[k] += want.numel()
    return [{"head": k, "top1": hits1[k] / n[k], "top5": hits5[k] / n[k]} for k in range(len(n))]


def corpus_windows(tokenizer, work_dir: Path, cfg: MedusaTrainConfig, roots: list[Path] | None):
    """Train/validation windows of Python sources (this machine's, or `roots`), in the target's tokens."""
    files = corpus.collect_files(roots or corpus.default_roots(), cfg.val_per_mille, max_file_bytes=200_000)
    backend = tokenizer.backend_tokenizer
    eot = tokenizer.eos_token_id
    corpus.write_shards(files, backend, eot, work_dir / "shards", tokenizer_digest(backend))
    train = TokenWindows(corpus.load_split(work_dir / "shards", "train"), cfg.seq_len)
    val = TokenWindows(corpus.load_split(work_dir / "shards", "validation"), cfg.seq_len)
    return train, val


def train_medusa(
    target_path: str,
    out: Path,
    cfg: MedusaTrainConfig,
    work_dir: Path = Path("runs/medusa"),
    roots: list[Path] | None = None,
    device: str = "auto",
    windows: tuple[TokenWindows, TokenWindows] | None = None,
) -> dict:
    """Train heads for the target at `target_path` into `out`; returns the report (also training.json).

    `windows`: (train, validation) token windows in the target's tokens (e.g. the suite recipe's own
    shards); by default the corpus under `roots` is tokenized into `work_dir`.
    """
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    target = load_model(target_path, dtype="float32", device=device)
    model = target.model
    torch.manual_seed(cfg.seed)
    vocab = model.get_output_embeddings().weight.shape[0]
    mcfg = MedusaConfig(
        cfg.num_heads, model.config.hidden_size, vocab, cfg.num_layers, cfg.share_lm_head, target=target_path
    )
    heads = MedusaHeads(mcfg, model.get_output_embeddings()).to(target.device)
    if windows is not None and windows[0].seq_len != cfg.seq_len:
        raise ValueError(f"windows of {windows[0].seq_len} tokens, but seq_len is {cfg.seq_len}")
    train, val = windows or corpus_windows(target.tokenizer, work_dir, cfg, roots)
    val_windows = val.evenly(cfg.val_windows).to(target.device)
    before = head_accuracy(model, heads, val_windows)
    params = [p for n, p in heads.named_parameters() if not n.startswith("shared.")]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    history = []
    budget, t_loop = StepBudget(cfg.max_seconds, cfg.steps, 0), time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="train medusa", unit="step")
    steps_done = 0
    for step in bar:
        total = budget.plan(step, time.perf_counter() - t_loop)
        if step >= total:
            break
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        lr *= 0.5 * (1 + math.cos(math.pi * step / total)) if step >= cfg.warmup_steps else 1.0
        for g in opt.param_groups:
            g["lr"] = lr
        ids = train.batch(cfg.seed, step, cfg.batch_size).to(target.device)
        with torch.no_grad():  # the target is frozen: its hidden states and its own predictions
            h = model.base_model(input_ids=ids).last_hidden_state
            p = model.get_output_embeddings()(h).float().softmax(-1)
        losses = head_losses(heads, h, p)
        loss = sum(cfg.head_decay**k * lk for k, lk in enumerate(losses))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        steps_done = step + 1
        last = step + 1 >= total or budget.over(time.perf_counter() - t_loop)
        if (step + 1) % 50 == 0 or last:
            history.append({"step": step + 1, "losses": [round(x.item(), 4) for x in losses]})
            log.info("medusa step %d/%d: head losses %s", step + 1, total, history[-1]["losses"])
        if last:
            break
    after = head_accuracy(model, heads, val_windows)
    heads.save(out)
    report = {
        "target": target_path,
        "config": asdict(cfg),
        "steps": steps_done,
        "data": "the given token windows" if windows else "this machine's standard library and site-packages",
        "tokens_seen": steps_done * cfg.batch_size * cfg.seq_len,
        "accuracy_before": before,
        "accuracy": after,
        "history": history,
        "train_s": round(time.perf_counter() - t_start, 1),
        "hardware": hardware(target.device),
    }
    (out / "training.json").write_text(json.dumps(report, indent=2))
    (out / "README.md").write_text(card(report))
    return report


def card(r: dict) -> str:
    c = r["config"]
    proj = "the target's shared" if c["share_lm_head"] else "an own"
    rows = "\n".join(
        f"| {a['head']} | t+{a['head'] + 2} | {b['top1']:.3f} | {a['top1']:.3f} | {a['top5']:.3f} |"
        for a, b in zip(r["accuracy"], r["accuracy_before"], strict=True)
    )
    lines = [
        f"# Medusa heads for `{r['target']}`",
        "",
        f"{c['num_heads']} heads (residual block x{c['num_layers']} + {proj} vocabulary projection),",
        "trained by Medusa-1 self-distillation: the target is frozen and head k learns the target's own",
        f"distribution for the token k + 2 positions ahead, on Python source windows ({c['seq_len']} tokens)",
        f"from {r.get('data', 'this machine')}.",
        "",
        "| head | guesses | top-1 before | top-1 | top-5 |",
        "|---|---|---|---|---|",
        rows,
        "",
        f"Agreement with the target's own argmax on held-out windows ({c['val_windows']} x {c['seq_len']}).",
        f"Steps: {r['steps']} x batch {c['batch_size']} ({r['tokens_seen']:,} tokens), lr {c['lr']},",
        f"on {r['hardware']}, {r['train_s']:.0f} s.",
        f"Reproduce: `specserve train medusa --target {r['target']} --out DIR --steps {r['steps']}"
        f" --batch-size {c['batch_size']} --seq-len {c['seq_len']}`.",
    ]
    return "\n".join(lines) + "\n"
