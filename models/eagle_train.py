"""`specserve train eagle`: an EAGLE head for a frozen target, with the draft chain unrolled in training.

Data: windows of Python source (this machine's, the corpus builder Medusa training uses); the
frozen target gives each window's features h [B, T, H] and its own distribution p. Pass 1 feeds the
head (h_i, x_{i+1}) and learns h_{i+1} (smooth L1) and p at i + 1 (soft cross-entropy, weight
`w_cls`). Pass j >= 2 feeds the head its own pass j - 1 guess of the feature instead, and attends
to the true entries before the chain's start plus the chain's earlier guesses: the cache a drafting
step of depth j sees (EAGLE-3's "training-time test"). Evaluation runs the same unroll over the
target's own greedy continuations of held-out prompts, so the depth at which the chain first
disagrees with the target is what greedy decoding would accept: acceptance per position and tokens
per target forward for a K-token chain. Checkpoints in --work-dir resume an interrupted run.

A draft vocabulary (`draft_vocab`, `add_draft_vocab` for a head already trained): the tokens most
frequent in the training windows, as EAGLE-3 keeps 32k of Llama-3's 128k; the evaluation then
measures what the restricted head accepts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import DynamicCache

from specserve.decoding.attention import AttentionLayout
from specserve.models.draft_vocab import frequent_tokens
from specserve.models.eagle import EagleConfig, EagleHead
from specserve.models.loading import load_model
from specserve.models.medusa_train import corpus_windows
from specserve.models.suite.card import hardware
from specserve.models.suite.train import StepBudget, TokenWindows, cpu_has_bf16, lr_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EagleTrainConfig:
    steps: int = 2000
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # where the cosine ends (`lr_at`, as the suite's training)
    unroll: int = 3  # chain depths trained (1: EAGLE-1, teacher-forced features only)
    w_cls: float = 1.0  # weight of the token loss against the feature loss
    eval_prompts: int = 32  # held-out prompts continued greedily by the target for evaluation
    eval_prompt_len: int = 64
    eval_new_tokens: int = 128
    eval_depth: int = 5  # the chain length the evaluation reports (K)
    val_per_mille: int = 20  # share of corpus files held out
    seed: int = 0
    max_seconds: float | None = None  # wall-clock budget for the steps
    checkpoint_every: int = 100
    draft_vocab: int = 0  # tokens the head may draft, the training data's most frequent (0: all)


def unrolled(head: EagleHead, tokens: torch.Tensor, h: torch.Tensor, passes: int) -> list[tuple]:
    """The head's chain over every start position: tokens [B, n] (x_{i+1}), features h [B, n, H]
    (h_i). Returns per pass j (1-based) (features [B, n, H], logits [B, n, V]); entry i of pass j
    is depth j of a chain started at i - j + 1, valid for i >= j - 1."""
    B, n, _ = h.shape
    dev = h.device
    pos = torch.arange(n, device=dev)[None].expand(B, n)  # [B, n]
    i, c = torch.arange(n, device=dev)[:, None], torch.arange(n, device=dev)[None, :]
    layout = AttentionLayout(None, False)
    cache, out, feats = DynamicCache(), [], h
    for j in range(1, passes + 1):
        if j > 1:  # entry i reads the pass j - 1 guess at i - 1 (entry 0: unused, any feature)
            feats = torch.cat([h[:, :1], out[-1][0][:, :-1]], dim=1)
        # pass 1: causal; pass j: true entries c <= i - j + 1, and pass m's entry i - j + m
        cols = [c <= i - j + 1] + [c == i - j + m for m in range(2, j + 1)]
        allowed = torch.cat(cols, dim=1)[None].expand(B, n, j * n)  # [B, n, j * n]
        mask = layout.masks(allowed, pos, pos.repeat(1, j), feats.dtype)
        x = head.embed(tokens, feats)
        y = head.decoder.model(
            inputs_embeds=x, position_ids=pos, attention_mask=mask, cache=cache, use_cache=True
        )
        f = y.last_hidden_state  # [B, n, H]
        out.append((f, head.decoder.lm_head(f)))
    return out


def losses(outs: list[tuple], h: torch.Tensor, p: torch.Tensor, w_cls: float) -> list[torch.Tensor]:
    """Per pass: smooth L1 to the next feature + w_cls x soft cross-entropy to the target's p."""
    res = []
    for j, (f, logits) in enumerate(outs, start=1):
        s = slice(j - 1, None)  # entries valid at depth j
        reg = F.smooth_l1_loss(f[:, s].float(), h[:, 1:][:, s].float())
        ce = -(p[:, 1:][:, s] * logits[:, s].float().log_softmax(-1)).sum(-1).mean()
        res.append(reg + w_cls * ce)
    return res


def _target_pass(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen target: features [B, T, H] and its own next-token probabilities p [B, T, V]."""
    with torch.no_grad():
        h = model.base_model(input_ids=ids).last_hidden_state
        return h, model.get_output_embeddings()(h).float().softmax(-1)


@torch.no_grad()
def greedy_continuations(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """[B, P] prompts -> [B, P + new_tokens]: the target's own greedy text (what greedy decoding verifies)."""
    ids = prompts
    out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    for _ in range(new_tokens):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
        ids = torch.cat([ids, nxt], dim=1)
        out = model(input_ids=nxt, cache=cache, use_cache=True)
        cache = out.past_key_values
    return ids


@torch.no_grad()
def chain_acceptance(head: EagleHead, model, seqs: torch.Tensor, prompt_len: int, depth: int) -> dict:
    """Greedy K-chain acceptance over the target's own continuations `seqs` [B, T]: for each start
    in the generated part, how deep the head's chain agrees with the target's argmax."""
    h = model.base_model(input_ids=seqs).last_hidden_state  # [B, T, H]
    truth = seqs[:, 1:]  # the target's greedy tokens: entry i's guess should be x_{i+2} = truth[i + 1]
    outs = unrolled(head, seqs[:, 1:], h[:, :-1], depth)
    n = seqs.shape[1] - 1
    starts = torch.arange(prompt_len - 1, n - depth, device=seqs.device)  # [S] chains inside the text
    ok = torch.ones(seqs.shape[0], len(starts), dtype=torch.bool, device=seqs.device)
    reach = []
    for j, (_, logits) in enumerate(outs, start=1):
        i = starts + j - 1  # the entry of depth j
        ok &= head.token_ids(logits[:, i].argmax(-1)) == truth[:, i + 1]
        reach.append(float(ok.float().mean()))
    return {
        "depth": depth,
        "accepted_at_least": [round(r, 4) for r in reach],  # P(accepted >= j), j = 1..depth
        "acceptance_per_position": [
            round(b / a, 4) if a else 0.0 for a, b in zip([1.0] + reach[:-1], reach, strict=True)
        ],
        "tokens_per_forward": round(1 + sum(reach), 3),
    }


def train_eagle(
    target_path: str,
    out: Path,
    cfg: EagleTrainConfig,
    work_dir: Path = Path("runs/eagle"),
    roots: list[Path] | None = None,
    device: str = "auto",
    windows: tuple[TokenWindows, TokenWindows] | None = None,
    resume: bool = True,
) -> dict:
    """Train a head for the target at `target_path` into `out`; returns the report (also training.json)."""
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    target = load_model(target_path, dtype="float32", device=device)
    model = target.model.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    head = EagleHead(EagleConfig.for_target(model, target_path), model).to(target.device)
    if not 0 <= cfg.draft_vocab <= head.config.vocab_size:
        raise ValueError(f"draft_vocab must be in 0..{head.config.vocab_size} (0: all): {cfg.draft_vocab}")
    train, val = windows or corpus_windows(target.tokenizer, work_dir, cfg, roots)
    bf16 = target.device.type == "cuda" or cpu_has_bf16()
    prompts = val.evenly(cfg.eval_prompts)[:, : cfg.eval_prompt_len].to(target.device)
    eval_seqs = greedy_continuations(model, prompts, cfg.eval_new_tokens)
    before = chain_acceptance(head, model, eval_seqs, cfg.eval_prompt_len, cfg.eval_depth)
    params = head.own_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ckpt, start, history, spent = work_dir / "eagle_ckpt.pt", 0, [], 0.0
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=target.device)
        if state["config"] == asdict(cfg) and state["target"] == head.config.target_digest:
            head.load_state_dict(state["head"], strict=False)
            opt.load_state_dict(state["opt"])
            start, history, spent = state["step"], state["history"], state["spent"]
            log.info("eagle: resuming at step %d", start)
    budget = StepBudget(None if cfg.max_seconds is None else cfg.max_seconds - spent, cfg.steps, start)
    t_loop, done = time.perf_counter(), start
    bar = tqdm(range(start, cfg.steps), desc="train eagle", unit="step", initial=start, total=cfg.steps)
    for step in bar:
        total = budget.plan(step, time.perf_counter() - t_loop)
        if step >= total:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, total)
        ids = train.batch(cfg.seed, step, cfg.batch_size).to(target.device)
        with torch.autocast(target.device.type, dtype=torch.bfloat16, enabled=bf16):
            h, p = _target_pass(model, ids)
            per_pass = losses(unrolled(head, ids[:, 1:], h[:, :-1], cfg.unroll), h, p, cfg.w_cls)
        loss = sum(per_pass)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done = step + 1
        bar.set_postfix(loss=f"{loss.item():.3f}")
        last = done >= total or budget.over(time.perf_counter() - t_loop)
        if done % cfg.checkpoint_every == 0 or last:
            history.append({"step": done, "losses": [round(x.item(), 4) for x in per_pass]})
            log.info("eagle step %d/%d: losses by depth %s", done, total, history[-1]["losses"])
            state = {"config": asdict(cfg), "target": head.config.target_digest, "step": done,
                     "history": history, "spent": spent + time.perf_counter() - t_loop,
                     "head": head.own_state(), "opt": opt.state_dict()}  # fmt: skip
            torch.save(state, ckpt.with_suffix(".tmp"))
            os.replace(ckpt.with_suffix(".tmp"), ckpt)
        if last:
            break
    head.eval()
    vocab = restrict_to_frequent(head, train, cfg.draft_vocab) if cfg.draft_vocab else None
    after = chain_acceptance(head, model, eval_seqs, cfg.eval_prompt_len, cfg.eval_depth)
    head.save(out)
    report = {
        "target": target_path,
        "config": asdict(cfg),
        "steps": done,
        "tokens_seen": done * cfg.batch_size * cfg.seq_len,
        "data": "the given token windows" if windows else "this machine's standard library and site-packages",
        "evaluation": f"{cfg.eval_prompts} held-out prompts of {cfg.eval_prompt_len} tokens, continued "
        f"greedily by the target for {cfg.eval_new_tokens} tokens; a chain of {cfg.eval_depth} from every "
        "position",
        "acceptance_before": before,
        "acceptance": after,
        **({"draft_vocab": vocab} if vocab else {}),
        "history": history,
        "train_s": round(spent + time.perf_counter() - t_loop, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "precision": "bf16 autocast" if bf16 else "float32",
        "hardware": hardware(target.device),
    }
    (out / "training.json").write_text(json.dumps(report, indent=2))
    (out / "README.md").write_text(card(report))
    return report


def restrict_to_frequent(head: EagleHead, train: TokenWindows, n: int) -> dict:
    """Restrict the head to the n tokens most frequent in the training windows; what it kept."""
    ids, coverage = frequent_tokens(train.tokens, head.config.vocab_size, n)
    head.restrict(ids)
    log.info("eagle: drafts over %d tokens, %.2f%% of the training tokens", n, 100 * coverage)
    return {"size": n, "coverage_of_training_tokens": round(coverage, 4)}


def add_draft_vocab(
    head_dir: Path,
    target_path: str,
    size: int,
    work_dir: Path = Path("runs/eagle"),
    roots: list[Path] | None = None,
    device: str = "auto",
    windows: tuple[TokenWindows, TokenWindows] | None = None,
) -> dict:
    """Restrict the trained head in `head_dir` to the `size` tokens most frequent in its training
    data (the corpus split its training used) and save it back; greedy chain acceptance before and
    after, on the training evaluation's held-out prompts, goes into its training.json."""
    record = head_dir / "training.json"
    trained = json.loads(record.read_text()) if record.is_file() else {}
    known = EagleTrainConfig.__dataclass_fields__
    cfg = EagleTrainConfig(**{k: v for k, v in trained.get("config", {}).items() if k in known})
    target = load_model(target_path, dtype="float32", device=device)
    model = target.model.requires_grad_(False)
    head = EagleHead.load(head_dir, model, torch.float32)
    if head.vocab is not None:
        raise ValueError(f"the head at {str(head_dir)!r} already drafts over {len(head.vocab)} tokens")
    train, val = windows or corpus_windows(target.tokenizer, work_dir, cfg, roots)
    prompts = val.evenly(cfg.eval_prompts)[:, : cfg.eval_prompt_len].to(target.device)
    eval_seqs = greedy_continuations(model, prompts, cfg.eval_new_tokens)
    full = chain_acceptance(head, model, eval_seqs, cfg.eval_prompt_len, cfg.eval_depth)
    vocab = restrict_to_frequent(head, train, size)
    after = chain_acceptance(head, model, eval_seqs, cfg.eval_prompt_len, cfg.eval_depth)
    vocab |= {"acceptance_full": full, "acceptance": after}
    head.save(head_dir)
    if trained:
        record.write_text(json.dumps(trained | {"draft_vocab": vocab}, indent=2))
    return vocab


def _vocab_lines(v: dict) -> list[str]:
    share = 100 * v["coverage_of_training_tokens"]
    return [f"Drafts over the {v['size']} tokens most frequent in its training data ({share:.1f}% of them).",
            ""]  # fmt: skip


def card(r: dict) -> str:
    c, a = r["config"], r["acceptance"]
    per_pos = " | ".join(f"{x:.3f}" for x in a["acceptance_per_position"])
    lines = [
        f"# EAGLE head for `{r['target']}`",
        "",
        "One Llama decoder layer over the target's last hidden state fused with the next token's",
        "embedding (EAGLE-1), logits through the target's own lm_head; trained with the chain unrolled",
        f"to depth {c['unroll']} (the head reads its own guessed features, as when drafting).",
        "",
        f"Evaluation: {r['evaluation']} (greedy acceptance, what `eagle` at K = {a['depth']} accepts).",
        "",
        "| | "
        + " | ".join(f"position {j + 1}" for j in range(a["depth"]))
        + " | tokens per target forward |",
        "|---|" + "---|" * (a["depth"] + 1),
        f"| acceptance | {per_pos} | {a['tokens_per_forward']:.2f} |",
        "",
        *(_vocab_lines(r["draft_vocab"]) if "draft_vocab" in r else []),
        f"Before training (random head): {r['acceptance_before']['tokens_per_forward']:.2f} tokens per "
        "forward.",
        f"Training: {r['steps']} steps x batch {c['batch_size']} x {c['seq_len']} tokens "
        f"({r['tokens_seen']:,} tokens) from {r['data']}, lr {c['lr']}, {r['precision']},",
        f"on {r['hardware']}, {r['train_s'] / 60:.1f} min of training ({r['total_s'] / 60:.1f} min in all).",
        f"Reproduce: `specserve train eagle --target {r['target']} --out DIR --steps {c['steps']}"
        + (f" --max-seconds {c['max_seconds']:.0f}`." if c["max_seconds"] else "`."),
    ]
    return "\n".join(lines) + "\n"
