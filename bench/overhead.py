"""`specserve bench overhead`: what recording metrics costs the engine, metrics on vs off, one run.

Both configurations decode the same prompts at batch 1 (where per-step overhead shows most),
alternating repeat by repeat after a warm-up; the ratio of median tokens/s is the cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.prompts import CODE_PROMPTS
from decoding import METHODS, Engine, SamplingParams, SpecParams
from metrics.accounting import build_accountant
from metrics.peaks import device_peaks
from metrics.prometheus import ServerMetrics
from server.cli_common import add_model_args, load_models


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("overhead", help="decode throughput with metrics recording on vs off")
    add_model_args(p)
    p.add_argument("--method", choices=list(METHODS), default="draft")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench_results/overhead.json"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    models = load_models(args, need_draft=args.method == "draft", need_medusa=args.method == "medusa")
    draft = models.draft.model if models.draft else None
    plain = Engine(models.target.model, draft, medusa=models.medusa, max_batch_size=1)
    metered = Engine(models.target.model, draft, medusa=models.medusa, max_batch_size=1)
    metrics = ServerMetrics(CollectorRegistry())
    peaks = device_peaks(models.target.device, models.target.dtype)
    metered.charge = build_accountant(models.target, models.draft, models.medusa, peaks)
    metered.on_step = metrics.on_step
    metered.on_tokens = metrics.on_tokens
    prompts = [models.target.tokenizer.encode(t) for t in CODE_PROMPTS]
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, ignore_eos=True)
    spec = SpecParams(args.method, args.k)

    def once(engine: Engine, finish) -> float:
        t0 = time.perf_counter()
        results = [engine.generate([p], sampling, spec)[0] for p in prompts]
        for r in results:
            finish(r)
        return sum(len(r.token_ids) for r in results) / (time.perf_counter() - t0)

    def finish_metered(result) -> None:  # what the server does per finished request
        metrics.requests.labels(result.finish_reason, result.stats.method).inc()
        metrics.generation_tokens.labels(result.stats.method).inc(result.stats.completion_tokens)
        metrics.e2e.labels(result.stats.method).observe(result.stats.e2e_s)

    once(plain, lambda r: None)
    once(metered, finish_metered)
    off, on = [], []
    for _ in range(args.repeats):
        off.append(once(plain, lambda r: None))
        on.append(once(metered, finish_metered))
    report = {
        "benchmark": "metrics overhead",
        "method": args.method,
        "k": args.k,
        "batch_size": 1,
        "tokens_per_s_off": statistics.median(off),
        "tokens_per_s_on": statistics.median(on),
        "runs_off": off,
        "runs_on": on,
    }
    report["on_over_off"] = report["tokens_per_s_on"] / report["tokens_per_s_off"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    sys.stdout.write(
        f"metrics off {report['tokens_per_s_off']:.1f} tok/s, on {report['tokens_per_s_on']:.1f} tok/s: "
        f"on/off = {report['on_over_off']:.3f}\nwrote {args.out}\n"
    )
    return 0
