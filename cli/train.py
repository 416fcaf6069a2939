"""`specserve train suite` (the default target/draft pair from this machine's Python sources) and
`specserve train medusa` (Medusa-1 heads for a target) and `specserve train eagle` (an EAGLE head)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from specserve.models.suite.configs import PRESETS
from specserve.models.suite_paths import SUITE_DIR

log = logging.getLogger(__name__)


def _default_preset() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def run_train_suite(args: argparse.Namespace) -> int:
    from specserve.models.suite.recipe import run_suite  # torch/transformers load only when training

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    preset = args.preset or _default_preset()
    try:
        run_suite(
            preset,
            Path(args.out),
            corpus_dirs=[Path(d) for d in args.corpus_dir] if args.corpus_dir else None,
            work_dir=Path(args.work_dir) if args.work_dir else None,
            resume=args.resume,
            device=args.device,
            threads=args.threads,
        )
    except ValueError as e:  # bad input: a clear message, before any training
        raise SystemExit(f"specserve train suite: {e}") from e
    return 0


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `train suite` to a CLI's subparsers; the handler is set as `func` (called with the Namespace)."""
    train = subparsers.add_parser("train", help="train models (the bundled default suite)")
    what = train.add_subparsers(
        dest="train_command", metavar="{suite,medusa,eagle,eagle-vocab,draft-vocab}", required=True
    )
    add_medusa_parser(what)
    add_eagle_parser(what)
    add_eagle_vocab_parser(what)
    add_draft_vocab_parser(what)
    suite = what.add_parser(
        "suite",
        help="corpus -> tokenizer -> target -> draft -> distillation -> evaluation -> model card",
        description="Train a Python-code target and draft from this interpreter's standard library and "
        "site-packages, and write them (Hugging Face folders) with a model card to --out.",
    )
    suite.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="gpu (the intended suite), cpu (best under an hour on 2 cores), cpu-tiny (seconds, "
        "for tests); default: gpu when CUDA is available, else cpu",
    )
    suite.add_argument(
        "--out", default=str(SUITE_DIR), help="output folder (default: the bundled suite, %(default)s)"
    )
    suite.add_argument(
        "--corpus-dir",
        action="append",
        default=None,
        metavar="DIR",
        help="use the .py files under DIR instead of the stdlib and site-packages (repeatable)",
    )
    suite.add_argument(
        "--work-dir",
        default=None,
        help="shards, tokenizer, checkpoints (default: runs/suite-PRESET in the working directory)",
    )
    suite.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the work folder's checkpoints (default: on)",
    )
    suite.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    suite.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: the preset's, 2 for cpu presets)",
    )
    suite.set_defaults(func=run_train_suite)


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
    _add_head_run_args(p, "runs/medusa", "corpus shards go here")
    p.set_defaults(func=run_train_medusa)


def _add_corpus_args(p: argparse.ArgumentParser, verb: str, work_dir: str, work_help: str) -> None:
    """--corpus-dir and --work-dir: the Python files a command tokenizes, and where the shards go."""
    p.add_argument(
        "--corpus-dir", action="append", default=None, metavar="DIR",
        help=f"{verb} the .py files under DIR (default: this machine's stdlib and site-packages)",
    )  # fmt: skip
    p.add_argument("--work-dir", default=work_dir, help=work_help)


def _add_head_run_args(p: argparse.ArgumentParser, work_dir: str, work_help: str) -> None:
    """The budget, data and device flags `train medusa` and `train eagle` share."""
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="wall-clock budget: fewer steps (and a shorter cosine) when --steps would not fit",
    )
    _add_corpus_args(p, "train on", work_dir, work_help)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)


def _head_target(args: argparse.Namespace, positive: tuple[str, ...]) -> str:
    """What `train medusa` and `train eagle` check first: threads set, the target (default: the
    bundled one), flags that must be >= 1 and a positive --max-seconds. Ends with one line otherwise."""
    import torch

    from specserve.models.suite_paths import default_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    target = args.target or (default_suite() or {}).get("target")
    if target is None:
        raise SystemExit("error: no target: pass --target (the bundled default suite is not present)")
    for name in positive:
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise SystemExit(f"error: --max-seconds must be > 0, got {args.max_seconds}")
    return target


def run_train_medusa(args: argparse.Namespace) -> int:
    from specserve.models.medusa_train import MedusaTrainConfig, train_medusa

    target = _head_target(args, ("num_heads", "num_layers", "steps", "batch_size", "seq_len"))
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


def add_eagle_parser(what: argparse._SubParsersAction) -> None:
    p = what.add_parser(
        "eagle",
        help="train an EAGLE head on a frozen target (feature-level drafting, chain unrolled in training)",
    )
    p.add_argument("--target", default=None, help="the target (default: the bundled suite's)")
    p.add_argument("--out", required=True, help="folder for the head, its config and card")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--unroll", type=int, default=3, help="chain depths trained (1: EAGLE-1's teacher forcing)"
    )
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts the evaluation continues")
    p.add_argument(
        "--draft-vocab", type=int, default=0, metavar="N",
        help="draft over the N tokens most frequent in the training data (0: all; EAGLE-3's reduction)",
    )  # fmt: skip
    _add_head_run_args(p, "runs/eagle", "corpus shards and checkpoints go here")
    p.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True, help="continue from a checkpoint"
    )
    p.set_defaults(func=run_train_eagle)


def run_train_eagle(args: argparse.Namespace) -> int:
    from specserve.models.eagle_train import EagleTrainConfig, train_eagle

    target = _head_target(args, ("steps", "batch_size", "seq_len", "unroll", "eval_prompts"))
    cfg = EagleTrainConfig(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, unroll=args.unroll,
        warmup_steps=min(50, args.steps), max_seconds=args.max_seconds, eval_prompts=args.eval_prompts,
        draft_vocab=args.draft_vocab,
    )  # fmt: skip
    try:
        report = train_eagle(
            target, Path(args.out), cfg, Path(args.work_dir),
            [Path(d) for d in args.corpus_dir] if args.corpus_dir else None, args.device, resume=args.resume,
        )  # fmt: skip
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    a = report["acceptance"]
    log.info("eagle: acceptance by position %s, %.2f tokens per forward", a["acceptance_per_position"],
             a["tokens_per_forward"])  # fmt: skip
    return 0


def add_eagle_vocab_parser(what: argparse._SubParsersAction) -> None:
    p = what.add_parser(
        "eagle-vocab",
        help="restrict a trained EAGLE head to the tokens most frequent in its training data (EAGLE-3's "
        "reduced draft vocabulary), in place",
    )
    p.add_argument("--eagle", required=True, help="the head's folder (rewritten)")
    p.add_argument("--size", type=int, required=True, help="tokens the head may draft")
    p.add_argument("--target", default=None, help="the target (default: the bundled suite's)")
    _add_corpus_args(p, "count over", "runs/eagle", "corpus shards go here")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=run_eagle_vocab, max_seconds=None)


def run_eagle_vocab(args: argparse.Namespace) -> int:
    from specserve.models.eagle_train import add_draft_vocab

    target = _head_target(args, ("size",))
    try:
        v = add_draft_vocab(
            Path(args.eagle), target, args.size, Path(args.work_dir),
            [Path(d) for d in args.corpus_dir] if args.corpus_dir else None, args.device,
        )  # fmt: skip
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    log.info("eagle: %d tokens (%.2f%% of the training tokens); %.2f tokens per forward, %.2f with all",
             v["size"], 100 * v["coverage_of_training_tokens"], v["acceptance"]["tokens_per_forward"],
             v["acceptance_full"]["tokens_per_forward"])  # fmt: skip
    return 0


def add_draft_vocab_parser(what: argparse._SubParsersAction) -> None:
    p = what.add_parser(
        "draft-vocab",
        help="let a draft model propose only the tokens most frequent in a corpus (writes draft_vocab.json "
        "into its folder)",
    )
    p.add_argument("--draft", required=True, help="the draft model's folder")
    p.add_argument("--size", type=int, required=True, help="tokens the draft may propose")
    _add_corpus_args(p, "count over", "runs/eagle", "corpus shards go here")
    p.set_defaults(func=run_draft_vocab)


def run_draft_vocab(args: argparse.Namespace) -> int:
    from specserve.models.draft_vocab import from_corpus

    try:
        v = from_corpus(
            args.draft,
            args.size,
            Path(args.work_dir),
            [Path(d) for d in args.corpus_dir] if args.corpus_dir else None,
        )
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from e
    log.info(
        "draft: proposes over %d tokens, %.2f%% of the corpus's",
        v["size"],
        100 * v["coverage_of_training_tokens"],
    )
    return 0
