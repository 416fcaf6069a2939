"""`specserve bench serve`: a closed-loop HTTP load test against a running server.

For each method and concurrency level, C clients each send streaming /generate requests back to
back until the level's requests are done; client-side TTFT / e2e and the server's per-request stats
are recorded. `--inprocess` also decodes the same prompts with an in-process engine at batch 1 on
the same models, so "what HTTP costs" is a ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from bench.prompts import CODE_PROMPTS
from server.cli_common import add_model_args, add_prompt_args, read_prompts

log = logging.getLogger(__name__)


@dataclass
class Sample:
    ok: bool
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    tokens: int = 0
    stats: dict = field(default_factory=dict)
    error: str = ""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP load test against a running server")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None)
    p.add_argument("--methods", nargs="+", default=["none"], choices=["none", "draft", "ngram", "medusa"])
    p.add_argument("--k", type=int, default=None, help="num_speculative_tokens override (default: server's)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--num-requests", type=int, default=0, help="per level (default: 4 x concurrency, >= 8)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout-s", type=float, default=600.0, help="per level; the run stops by itself")
    p.add_argument("--inprocess", action="store_true", help="also decode in-process at batch 1 (model flags)")
    p.add_argument("--out", type=Path, default=Path("bench_results/serve.json"))
    add_prompt_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


async def one_request(client: httpx.AsyncClient, prompt: str, method: str, args) -> Sample:
    body = {
        "prompt": prompt,
        "max_tokens": args.max_tokens,
        "method": method,
        "stream": True,
        "ignore_eos": True,
    }
    if args.k is not None and method != "none":
        body["num_speculative_tokens"] = args.k
    t0 = time.perf_counter()
    s = Sample(ok=False)
    try:
        async with client.stream("POST", "/generate", json=body) as r:
            if r.status_code != 200:
                s.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return s
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    s.error = event["error"]["message"]
                    return s
                if event.get("token_ids") and not s.tokens:
                    s.ttft_s = time.perf_counter() - t0
                s.tokens += len(event.get("token_ids", []))
                if "stats" in event:
                    s.stats = event["stats"]
    except httpx.HTTPError as e:
        s.error = f"{type(e).__name__}: {e}"
        return s
    s.e2e_s, s.ok = time.perf_counter() - t0, True
    return s


async def run_level(args, prompts: list[str], method: str, concurrency: int, bar: tqdm) -> dict:
    n = args.num_requests or max(8, 4 * concurrency)
    todo = iter(range(n))
    samples: list[Sample] = []
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=args.timeout_s, limits=limits
    ) as client:

        async def worker() -> None:
            for i in todo:
                samples.append(await one_request(client, prompts[i % len(prompts)], method, args))
                bar.update()

        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), args.timeout_s)
        except asyncio.TimeoutError:
            log.warning("level %s x%d hit --timeout-s; reporting what finished", method, concurrency)
        wall = time.perf_counter() - t0
    return summarize_level(method, concurrency, samples, wall)


def pct(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values)
    return {
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
    }


def summarize_level(method: str, concurrency: int, samples: list[Sample], wall: float) -> dict:
    ok = [s for s in samples if s.ok]
    tokens = sum(s.tokens for s in ok)
    return {
        "method": method,
        "concurrency": concurrency,
        "completed": len(ok),
        "failed": len(samples) - len(ok),
        "errors": sorted({s.error for s in samples if not s.ok})[:5],
        "wall_s": wall,
        "requests_per_s": len(ok) / wall if wall else 0.0,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall if wall else 0.0,
        "ttft_s": pct([s.ttft_s for s in ok]),
        "e2e_s": pct([s.e2e_s for s in ok]),
        "server_ttft_s": pct([s.stats.get("ttft_s", 0.0) for s in ok]),
        "mean_batch_size": statistics.fmean(s.stats.get("mean_batch_size", 0.0) for s in ok) if ok else 0.0,
        "acceptance_rate": statistics.fmean(s.stats.get("acceptance_rate", 0.0) for s in ok) if ok else 0.0,
        "mean_accepted_length": statistics.fmean(s.stats.get("mean_accepted_length", 0.0) for s in ok)
        if ok
        else 0.0,
    }


def inprocess_baseline(args, prompts: list[str], method: str) -> dict:
    """Decode the same prompts one at a time in this process, on the server's models."""
    from decoding import Engine, SamplingParams, SpecParams
    from server.cli_common import load_models

    models = load_models(args, need_draft=method == "draft", need_medusa=method == "medusa")
    tok = models.target.tokenizer
    draft = models.draft.model if models.draft else None
    engine = Engine(models.target.model, draft, medusa=models.medusa, max_batch_size=1)
    spec = SpecParams(method, args.k or 4)
    ids = [tok.encode(p) for p in prompts]
    engine.generate(ids[:1], SamplingParams(max_new_tokens=4, ignore_eos=True), spec)  # warm-up
    sampling = SamplingParams(max_new_tokens=args.max_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    res = [engine.generate([p], sampling, spec)[0] for p in ids]  # one at a time, as one HTTP client
    wall = time.perf_counter() - t0
    tokens = sum(len(r.token_ids) for r in res)
    return {
        "method": method,
        "output_tokens_per_s": tokens / wall,
        "ttft_s": pct([r.stats.ttft_s for r in res]),
    }


def run(args: argparse.Namespace) -> int:
    try:
        httpx.get(args.url.rstrip("/") + "/health", timeout=5).raise_for_status()
    except httpx.HTTPError as e:
        raise SystemExit(f"error: server at {args.url} is not reachable or not healthy ({e})") from e
    prompts = [t for _, t in read_prompts(args)] if (args.prompt or args.prompts) else CODE_PROMPTS
    levels = [(m, c) for m in args.methods for c in args.concurrency]
    total = sum(args.num_requests or max(8, 4 * c) for _, c in levels)
    bar = tqdm(total=total, desc="bench serve", file=sys.stderr)
    results = [asyncio.run(run_level(args, prompts, m, c, bar)) for m, c in levels]
    bar.close()
    report = {"benchmark": "serve", "url": args.url, "max_tokens": args.max_tokens, "levels": results}
    if args.inprocess:
        report["inprocess"] = {}
        for m in args.methods:
            base = inprocess_baseline(args, prompts, m)
            http1 = next((r for r in results if r["method"] == m and r["concurrency"] == 1), None)
            if http1:
                base["http_vs_inprocess_tokens_per_s"] = (
                    http1["output_tokens_per_s"] / base["output_tokens_per_s"]
                )
                base["http_added_ttft_s"] = http1["ttft_s"]["p50"] - base["ttft_s"]["p50"]
            report["inprocess"][m] = base
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    sys.stdout.write(format_table(results) + f"\nwrote {args.out}\n")
    for m, base in report.get("inprocess", {}).items():
        sys.stdout.write(f"in-process {m}: {json.dumps(base)}\n")
    return 0


def format_table(levels: list[dict]) -> str:
    head = (
        f"{'method':<8}{'conc':>5}{'ok':>5}{'fail':>5}{'req/s':>8}{'tok/s':>9}{'ttft p50':>10}{'e2e p50':>9}"
        f"{'batch':>7}{'accept':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in levels:
        lines.append(
            f"{r['method']:<8}{r['concurrency']:>5}{r['completed']:>5}{r['failed']:>5}"
            f"{r['requests_per_s']:>8.2f}{r['output_tokens_per_s']:>9.1f}"
            f"{r['ttft_s'].get('p50', 0):>10.4f}{r['e2e_s'].get('p50', 0):>9.3f}"
            f"{r['mean_batch_size']:>7.2f}{r['acceptance_rate']:>8.2f}"
        )
    return "\n".join(lines)
