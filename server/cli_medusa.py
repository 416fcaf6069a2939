"""`specserve train medusa`: Medusa-1 heads for a target (default: the bundled suite's)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_medusa_parser(what: argparse._SubParsersAction) -> None:
    p = what.add_parser("medusa", help="train Medusa heads on a frozen target (Medusa-1 self-distillation)")
    p.add_argument("--target", default=None, help="the target (default: the bundled suite's)")
    p.add_argument("--out", required=True, help="folder for the heads, their config and card")
    p.add_argument("--num-heads", type=int, default=3)
    p.add_argument("--num-layers", type=int, default=1, help="residual blocks per head")
    p.add_argument(
        "--own-lm-head", action="store_true", help="a vocabulary projection per head (default: shared)"
    )
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="wall-clock budget: fewer steps (and a shorter cosine) when --steps would not fit",
    )
    p.add_argument(
        "--corpus-dir",
        action="append",
        default=None,
        metavar="DIR",
        help="train on the .py files under DIR (default: this machine's stdlib and site-packages)",
    )
    p.add_argument("--work-dir", default="runs/medusa", help="corpus shards go here")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from models.medusa_train import MedusaTrainConfig, train_medusa
    from models.suite_paths import default_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    target = args.target or (default_suite() or {}).get("target")
    if target is None:
        raise SystemExit("error: no target: pass --target (the bundled default suite is not present)")
    for name in ("num_heads", "num_layers", "steps", "batch_size", "seq_len"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise SystemExit(f"error: --max-seconds must be > 0, got {args.max_seconds}")
    cfg = MedusaTrainConfig(
        num_heads=args.num_heads,
        num_layers=args.num_layers,
        share_lm_head=not args.own_lm_head,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=min(20, args.steps),
        max_seconds=args.max_seconds,
    )
    try:
        report = train_medusa(
            target,
            Path(args.out),
            cfg,
            Path(args.work_dir),
            [Path(d) for d in args.corpus_dir] if args.corpus_dir else None,
            args.device,
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    for a in report["accuracy"]:
        log.info("head %d: top-1 %.3f, top-5 %.3f", a["head"], a["top1"], a["top5"])
    return 0
