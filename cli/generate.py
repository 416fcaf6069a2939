"""`specserve generate`: decode prompts in-process with any method and print text or JSON lines."""

from __future__ import annotations

import argparse
import json
import sys

from specserve.cli.options import (
    add_compile_args,
    add_model_args,
    add_prompt_args,
    add_sampling_args,
    build_engine,
    load_models,
    read_prompts,
    warm_up_engine,
)
from specserve.decoding.params import METHODS, SamplingParams, SpecParams


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate from prompts in-process (no server)")
    add_model_args(p)
    add_prompt_args(p)
    add_sampling_args(p)
    p.add_argument("--method", choices=list(METHODS), default="none")
    p.add_argument("--num-speculative-tokens", "-k", default="4", help="K, or 'auto' (chosen per step)")
    p.add_argument("--batch-size", type=int, default=8, help="rows decoded together (continuous batching)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt, in input order")
    add_compile_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:  # validate every parameter before loading anything
        sampling = SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
        spec = SpecParams.parse(args.method, args.num_speculative_tokens)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    prompts = read_prompts(args)
    if not prompts:
        raise SystemExit("error: pass --prompt TEXT or --prompts FILE")
    models = load_models(
        args,
        need_draft=args.method == "draft",
        need_medusa=args.method == "medusa",
        need_eagle=args.method == "eagle",
    )
    tok = models.target.tokenizer
    engine = build_engine(args, models, args.batch_size)
    warm_up_engine(args, engine, args.method)
    ids = [tok.encode(text) for _, text in prompts]
    try:
        rows = [
            engine.make_row(p, sampling, spec, request_id=pid)
            for (pid, _), p in zip(prompts, ids, strict=True)
        ]
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    for r in rows:
        engine.add(r)
    while engine.has_work():
        engine.step()
    for r in rows:
        text = tok.decode(r.generated, skip_special_tokens=True)
        if args.json:
            obj = {
                "id": r.request_id,
                "text": text,
                "token_ids": r.generated,
                "finish_reason": r.finish_reason,
                "stats": r.stats.to_dict(),
            }
            sys.stdout.write(json.dumps(obj) + "\n")
        else:
            sys.stdout.write(text + "\n")
    return 0
