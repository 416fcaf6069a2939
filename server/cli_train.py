"""`specserve train suite`: train the default target/draft pair from this machine's Python sources."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from models.suite.configs import PRESETS
from models.suite_paths import SUITE_DIR
from server.cli_medusa import add_medusa_parser

log = logging.getLogger(__name__)


def _default_preset() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def run_train_suite(args: argparse.Namespace) -> int:
    from models.suite.recipe import run_suite  # torch/transformers load only when training

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
    what = train.add_subparsers(dest="train_command", metavar="{suite,medusa}", required=True)
    add_medusa_parser(what)
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
