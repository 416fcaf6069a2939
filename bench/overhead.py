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

from prometheus_client import CollectorRegistry

from specserve.bench.prompts import CODE_PROMPTS
from specserve.decoding.engine import Engine
from specserve.decoding.params import SamplingParams, SpecParams
from specserve.metrics.accounting import build_accountant
from specserve.metrics.peaks import device_peaks
from specserve.metrics.prometheus import ServerMetrics
from specserve.models.loading import Models


def run(args: argparse.Namespace, models: Models) -> int:
    draft = models.draft.model if models.draft else None
    plain = Engine(models.target.model, draft, medusa=models.medusa, eagle=models.eagle, max_batch_size=1)
    metered = Engine(models.target.model, draft, medusa=models.medusa, eagle=models.eagle, max_batch_size=1)
    metrics = ServerMetrics(CollectorRegistry())
    peaks = device_peaks(models.target.device, models.target.dtype)
    metered.charge = build_accountant(models.target, models.draft, models.medusa, peaks, models.eagle)
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
