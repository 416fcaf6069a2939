"""Flags and model resolution shared by `specserve generate`, `bench decode` and (later) `serve`."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from decoding.params import METHODS
from models import LoadedModel, check_draft_compatible, load_model
from models.loading import DTYPES
from models.medusa import MedusaHeads
from models.suite_paths import default_suite

log = logging.getLogger(__name__)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--target", help="target model: Hub id or local path (default: the bundled suite)")
    g.add_argument("--draft", help="draft model for --method draft (default: the bundled suite's draft)")
    g.add_argument("--medusa", help="Medusa heads folder for --method medusa (default: the bundled heads)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (accelerate device_map)")
    g.add_argument(
        "--trust-remote-code", action="store_true", help="run model code from the Hub (off by default)"
    )
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
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


@dataclass
class Models:
    target: LoadedModel
    draft: LoadedModel | None
    medusa: MedusaHeads | None = None
    medusa_path: str | None = None


def load_models(args: argparse.Namespace, need_draft: bool, need_medusa: bool = False) -> Models:
    """Load --target/--draft/--medusa, falling back to the bundled suite; check they fit together."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    suite = default_suite()
    target_path, draft_path, medusa_path = args.target, args.draft, args.medusa
    if target_path is None:
        if suite is None:
            raise SystemExit(
                "error: no model: pass --target (a Hub id or local path); the bundled default suite "
                "is not present in this installation"
            )
        target_path = suite["target"]
        draft_path = draft_path or suite.get("draft")
        medusa_path = medusa_path or suite.get("medusa")
    if need_draft and draft_path is None:
        raise SystemExit("error: --method draft needs a draft model: pass --draft")
    if need_medusa and medusa_path is None:
        raise SystemExit("error: --method medusa needs Medusa heads: pass --medusa")
    kw = {"dtype": args.dtype, "device": args.device, "trust_remote_code": args.trust_remote_code}
    try:
        target = load_model(target_path, **kw)
        draft = load_model(draft_path, **kw) if need_draft and draft_path else None
        if draft is not None:
            check_draft_compatible(target, draft)
        medusa = MedusaHeads.load(medusa_path, target.model) if need_medusa and medusa_path else None
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    return Models(target, draft, medusa, medusa_path if medusa else None)


def read_prompts(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(id, text) pairs from --prompt or --prompts, in input order."""
    if args.prompt is not None:
        return [("0", args.prompt)]
    if args.prompts is None:
        raise SystemExit("error: pass --prompt TEXT or --prompts FILE")
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


def method_choices() -> tuple[str, ...]:
    return METHODS
