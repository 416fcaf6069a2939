"""`specserve bench decode`: in-process decode throughput of our methods vs Hugging Face generate().

Each configuration (method, K, batch size, compile mode) decodes the same prompts after a warm-up,
several times, every configuration taking its turn in each round; the median tokens/s is reported
with ratios measured in the same run: to our `none` at the same batch size and compile mode, to the
same configuration run eagerly (`--compile on off`), and to HF `generate()` /
`generate(assistant_model=...)` / `generate(prompt_lookup_num_tokens=K)` (batch 1: all they
support). MBU / MFU: bytes read (weights once per forward, plus KV) and FLOPs per second over the
device's peaks. Greedy runs also check that every method emits HF's exact tokens.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from specserve.bench.prompts import CODE_PROMPTS
from specserve.decoding.compiled import use_compile_cache
from specserve.decoding.engine import Engine
from specserve.decoding.params import SamplingParams, SpecParams
from specserve.metrics.accounting import build_accountant
from specserve.metrics.peaks import Peaks, device_peaks
from specserve.models.loading import Models

log = logging.getLogger(__name__)


@dataclass
class Result:
    impl: str  # "specserve" or "hf"
    method: str  # none / draft / ngram, or hf's generate / assisted / prompt_lookup
    k: int
    batch_size: int
    tokens: int
    runs_s: list[float]
    compile: str = "off"  # "on", "off" or "auto" (each kind of forward the faster way, measured)
    tokens_per_s: float = 0.0
    bytes_read: float = 0.0  # per run (weights once per forward and every row's KV)
    flops: float = 0.0  # per run
    mbu: float | None = None  # bytes read per second over the measured peak
    mfu: float | None = None
    acceptance_rate: float | None = None
    mean_accepted_length: float | None = None
    matches_hf_greedy: bool | None = None
    ratios: dict[str, float] = field(default_factory=dict)


@dataclass
class Job:
    """One configuration to time: `fn` decodes the whole workload and returns its outputs."""

    result: Result
    fn: Callable[[], list]
    outputs: list = field(default_factory=list)


def ours_job(
    engine: Engine,
    prompts: list[list[int]],
    method: str,
    k: int,
    max_new: int,
    compile: str = "off",
    ignore_eos: bool = False,
) -> Job:
    sampling = SamplingParams(max_new_tokens=max_new, ignore_eos=ignore_eos)
    res = Result("specserve", method, k, engine.max_batch_size, 0, [], compile)
    spec = SpecParams(method, k) if k else SpecParams(method)

    def go():
        results = engine.generate(prompts, sampling, spec)
        res.tokens = sum(len(r.token_ids) for r in results)
        res.bytes_read = sum(r.stats.bytes_read for r in results)
        res.flops = sum(r.stats.flops for r in results)
        if method != "none":
            drafted = sum(r.stats.draft_tokens for r in results)
            res.acceptance_rate = sum(r.stats.accepted_tokens for r in results) / drafted if drafted else 0.0
            res.mean_accepted_length = res.tokens / sum(r.stats.target_forwards for r in results)
        return [r.token_ids for r in results]

    return Job(res, go)


def hf_job(
    models, prompts: list[list[int]], method: str, k: int, max_new: int, ignore_eos: bool = False
) -> Job:
    model = models.target.model
    kw: dict = {"max_new_tokens": max_new, "do_sample": False}
    if ignore_eos:
        kw["min_new_tokens"] = max_new
    if method == "assisted":
        kw["assistant_model"] = models.draft.model
    elif method == "prompt_lookup":
        kw["prompt_lookup_num_tokens"] = k
    if models.target.tokenizer.pad_token_id is None:
        kw["pad_token_id"] = models.target.eos_token_ids[0] if models.target.eos_token_ids else 0
    res = Result("hf", method, k, 1, 0, [])

    def go():
        out = []
        for p in prompts:
            ids = torch.tensor([p], device=model.device)
            with torch.no_grad():
                gen = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
            out.append(gen[0, len(p) :].tolist())
        res.tokens = sum(len(o) for o in out)
        return out

    return Job(res, go)


def run_jobs(jobs: list[Job], warmup: int, repeats: int) -> None:
    """Warm every job up, then time them round-robin so drift on a shared machine hits all alike."""
    bar = tqdm(total=len(jobs) * (warmup + repeats), desc="bench decode", file=sys.stderr)
    for job in jobs:
        for _ in range(warmup):
            job.outputs = job.fn()
            bar.update()
    for _ in range(repeats):
        for job in jobs:
            t0 = time.perf_counter()
            job.outputs = job.fn()
            job.result.runs_s.append(time.perf_counter() - t0)
            bar.update()
    bar.close()


def run(args: argparse.Namespace, models: Models, texts: list[str]) -> int:
    """Time the plan `args` describes (`specserve bench decode`'s flags) on these models; `texts`
    are the prompts (none: the built-in code prompts)."""
    need_draft = "draft" in args.methods
    tok = models.target.tokenizer
    texts = texts or CODE_PROMPTS
    base = [tok.encode(t) for t in texts[: args.num_prompts]]
    plan = (
        [("none", 0)]
        + [(m, k) for m in args.methods if m not in ("none", "medusa") for k in args.k]
        + [("medusa", 0)] * ("medusa" in args.methods)
    )  # Medusa's tree, not K, sets its speculation
    jobs: list[Job] = []
    if not args.no_hf:
        jobs.append(hf_job(models, base, "generate", 0, args.max_new_tokens, args.ignore_eos))
        if need_draft:
            jobs.append(hf_job(models, base, "assisted", 0, args.max_new_tokens, args.ignore_eos))
        if "ngram" in args.methods:
            jobs += [
                hf_job(models, base, "prompt_lookup", k, args.max_new_tokens, args.ignore_eos) for k in args.k
            ]
    if set(args.compile) - {"off"}:
        use_compile_cache(args.compile_cache)
    peaks = device_peaks(models.target.device, models.target.dtype)
    accountant = build_accountant(models.target, models.draft, models.medusa, peaks, models.eagle)
    for bs in args.batch_sizes:
        prompts = [base[i % len(base)] for i in range(max(bs, len(base)))]
        for mode in dict.fromkeys(args.compile):
            engine = _engine(models, bs, mode, accountant, [m for m, _ in plan], max(args.k))
            jobs += [
                ours_job(engine, prompts, m, k, args.max_new_tokens, mode, args.ignore_eos) for m, k in plan
            ]
    run_jobs(jobs, args.warmup, args.repeats)
    # HF stops ignoring EOS by masking it (min_new_tokens); ours emits it and goes on: not comparable
    hf_ref = jobs[0].outputs if not args.no_hf and not args.ignore_eos else None
    for job in jobs:
        if job.result.impl == "specserve" and hf_ref is not None:
            job.result.matches_hf_greedy = job.outputs[: len(base)] == hf_ref
    report = summarize([j.result for j in jobs], models, args, peaks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    from specserve.bench.plots import decode_compile_plot, decode_speedup_plot  # matplotlib loads here

    title = f"Speedup over none ({report['device']}, {report['dtype']})"
    pngs = [decode_speedup_plot(report["results"], title, args.out.with_suffix(".png"))]
    title = f"Compiled over eager ({report['device']}, {report['dtype']})"
    pngs.append(
        decode_compile_plot(report["results"], title, args.out.with_name(args.out.stem + "_compiled.png"))
    )
    written = "".join(f", {p}" for p in pngs if p)
    sys.stdout.write(format_table(report["results"]) + f"\nwrote {args.out}{written}\n")
    return 0


def _engine(models: Models, batch_size: int, mode: str, accountant, methods: list[str], k: int) -> Engine:
    """An engine for one batch size and compile mode; under auto, its warm-up decides."""
    engine = Engine(
        models.target.model,
        models.draft.model if models.draft else None,
        medusa=models.medusa,
        eagle=models.eagle,
        eos_token_ids=models.target.eos_token_ids,
        max_batch_size=batch_size,
        compile=mode,
    )
    engine.charge = accountant
    return engine


def summarize(results: list[Result], models, args, peaks: Peaks) -> dict:
    for r in results:
        r.tokens_per_s = r.tokens / statistics.median(r.runs_s)
        if r.impl == "specserve" and peaks.bytes_per_s:
            r.mbu = r.bytes_read / statistics.median(r.runs_s) / peaks.bytes_per_s
            r.mfu = r.flops / statistics.median(r.runs_s) / peaks.flops_per_s
    ours = {(r.method, r.k, r.batch_size, r.compile): r.tokens_per_s for r in results if r.impl != "hf"}
    hf = {(r.method, r.k): r.tokens_per_s for r in results if r.impl == "hf"}
    for r in results:
        if r.impl == "specserve":
            r.ratios["vs_none"] = r.tokens_per_s / ours[("none", 0, r.batch_size, r.compile)]
            eager = ours.get((r.method, r.k, r.batch_size, "off"))
            if eager and r.compile != "off":
                r.ratios["vs_eager"] = r.tokens_per_s / eager
        if r.batch_size == 1 and hf:
            r.ratios["vs_hf_generate"] = r.tokens_per_s / hf[("generate", 0)]
            if ("assisted", 0) in hf:
                r.ratios["vs_hf_assisted"] = r.tokens_per_s / hf[("assisted", 0)]
    return {
        "benchmark": "decode",
        "target": models.target.path,
        "draft": models.draft.path if models.draft else None,
        "dtype": args.dtype,
        "device": str(models.target.device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "max_new_tokens": args.max_new_tokens,
        "ignore_eos": args.ignore_eos,
        "repeats": args.repeats,
        "peaks": {"bytes_per_s": peaks.bytes_per_s, "flops_per_s": peaks.flops_per_s, "source": peaks.source},
        "results": [asdict(r) for r in results],
    }


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'impl':<10}{'method':<14}{'k':>3}{'batch':>6}{'compile':>9}{'tok/s':>10}{'vs none':>9}"
        f"{'vs eager':>9}{'vs HF':>8}{'vs HF asst':>11}{'MBU':>6}{'accept':>8}{'len':>6}{'=HF':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        q = r["ratios"]
        acc = f"{r['acceptance_rate']:.2f}" if r["acceptance_rate"] is not None else "-"
        ml = f"{r['mean_accepted_length']:.2f}" if r["mean_accepted_length"] is not None else "-"
        eq = {None: "-", True: "yes", False: "NO"}[r["matches_hf_greedy"]]
        mbu = f"{r['mbu']:.2f}" if r.get("mbu") is not None else "-"
        comp = r.get("compile", "off") if r["impl"] == "specserve" else "-"
        lines.append(
            f"{r['impl']:<10}{r['method']:<14}{r['k']:>3}{r['batch_size']:>6}{comp:>9}{r['tokens_per_s']:>10.1f}"
            f"{q.get('vs_none', float('nan')):>9.2f}{q.get('vs_eager', float('nan')):>9.2f}"
            f"{q.get('vs_hf_generate', float('nan')):>8.2f}{q.get('vs_hf_assisted', float('nan')):>11.2f}"
            f"{mbu:>6}{acc:>8}{ml:>6}{eq:>5}"
        )
    return "\n".join(lines)
