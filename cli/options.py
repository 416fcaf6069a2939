"""Flags shared by subcommands (models, prompts, sampling) and what they resolve to.

Nothing here imports torch: `load_models` imports the loaders when it runs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from specserve.models.suite_paths import default_suite

if TYPE_CHECKING:
    from specserve.models.loading import Models

DTYPES = ("bfloat16", "float16", "float32", "float64")
COMPILE_MODES = ("auto", "on", "off")  # as specserve.decoding.compiled (which imports torch)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--target", help="target model: Hub id or local path (default: the bundled suite)")
    g.add_argument("--draft", help="draft model for --method draft (default: the bundled suite's draft)")
    g.add_argument("--medusa", help="Medusa heads folder for --method medusa (default: the bundled heads)")
    g.add_argument("--eagle", help="EAGLE head folder for --method eagle (default: the bundled head)")
    g.add_argument("--dtype", choices=DTYPES, default="float32")
    g.add_argument(
        "--eagle-dtype", choices=("auto", *DTYPES), default="auto",
        help="the EAGLE head's precision: auto (bfloat16 for a float32 target on a CPU with native "
        "bfloat16, else --dtype's) or a dtype; lossless at any",
    )  # fmt: skip
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (accelerate device_map)")
    g.add_argument(
        "--trust-remote-code", action="store_true", help="run model code from the Hub (off by default)"
    )
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_log_level(p)


def add_compile_args(p: argparse.ArgumentParser, several: bool = False) -> None:
    """--compile (several: one or more modes, compared in one run) and --compile-cache."""
    help_text = "compiled decode steps: auto (kept where a warm-up measures them faster), on or off"
    if several:
        p.add_argument("--compile", nargs="+", choices=COMPILE_MODES, default=["auto"], help=help_text)
    else:
        p.add_argument("--compile", choices=COMPILE_MODES, default="auto", help=help_text)
    p.add_argument("--compile-cache", default=None, help="folder for compiled graphs, kept across runs "
                   "(default: $TORCHINDUCTOR_CACHE_DIR, else ~/.cache/specserve/inductor)")  # fmt: skip


def add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default=os.environ.get("SPECSERVE_LOG_LEVEL", "INFO"))


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", help="one prompt text")
    g.add_argument("--prompts", type=Path, help='JSON lines file: {"prompt": ..., "id": optional}')


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)


def quiet_transformers() -> None:
    """transformers' per-file weight-loading bars drown a command's own output (called by the
    commands that load models, so the others never import transformers)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_models(
    args: argparse.Namespace, need_draft: bool, need_medusa: bool = False, need_eagle: bool = False
) -> Models:
    """Load --target/--draft/--medusa/--eagle, falling back to the bundled suite; check they fit together.
    Problems end the command with one line naming them."""
    import torch

    from specserve.models.loading import load_models as load

    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = default_suite()
    target, draft, medusa, eagle = args.target, args.draft, args.medusa, args.eagle
    if target is None:
        if suite is None:
            raise SystemExit(
                "error: no model: pass --target (a Hub id or local path); the bundled default suite "
                "is not present in this installation"
            )
        target = suite["target"]
        draft = draft or suite.get("draft")
        medusa = medusa or suite.get("medusa")
        eagle = eagle or suite.get("eagle")
    if need_draft and draft is None:
        raise SystemExit("error: --method draft needs a draft model: pass --draft")
    if need_medusa and medusa is None:
        raise SystemExit("error: --method medusa needs Medusa heads: pass --medusa")
    if need_eagle and eagle is None:
        raise SystemExit("error: --method eagle needs an EAGLE head: pass --eagle")
    try:
        return load(
            target,
            draft if need_draft else None,
            medusa if need_medusa else None,
            eagle if need_eagle else None,
            dtype=args.dtype,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            eagle_dtype=args.eagle_dtype,
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e


def build_engine(args: argparse.Namespace, models: Models, batch_size: int):
    """An engine on loaded models with their bytes/FLOPs accountant (so per-request stats carry
    bytes_read, mbu and mfu, as the server's do); compiled steps unless --compile off."""
    from specserve.decoding.compiled import use_compile_cache
    from specserve.decoding.engine import Engine
    from specserve.metrics.accounting import build_accountant
    from specserve.metrics.peaks import device_peaks

    if args.compile != "off":
        use_compile_cache(args.compile_cache)
    engine = Engine(
        models.target.model,
        models.draft.model if models.draft else None,
        medusa=models.medusa,
        eagle=models.eagle,
        eos_token_ids=models.target.eos_token_ids,
        max_batch_size=batch_size,
        compile=args.compile,
    )
    peaks = device_peaks(models.target.device, models.target.dtype)
    engine.charge = build_accountant(models.target, models.draft, models.medusa, peaks, models.eagle)
    return engine


def warm_up_engine(args: argparse.Namespace, engine, method: str) -> None:
    """--compile on/auto: compile (and under auto, judge) the decode steps before the real work."""
    from specserve.decoding.warmup import warm_up

    warm_up(engine, args.compile, [method])


def read_prompts(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(id, text) pairs from --prompt or --prompts, in input order; [] when neither was given."""
    if args.prompt is not None:
        return [("0", args.prompt)]
    if args.prompts is None:
        return []
    out = []
    try:
        lines = args.prompts.read_text().splitlines()
    except OSError as e:
        raise SystemExit(f"error: cannot read --prompts {args.prompts}: {e}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            text = obj["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SystemExit(f'error: {args.prompts}:{n}: expected {{"prompt": ...}} ({e})') from e
        if not isinstance(text, str):
            raise SystemExit(f"error: {args.prompts}:{n}: prompt must be a string")
        out.append((str(obj.get("id", len(out))), text))
    if not out:
        raise SystemExit(f"error: {args.prompts} holds no prompts")
    return out
