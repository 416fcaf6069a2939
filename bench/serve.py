"""`specserve bench serve`: an HTTP load test against a running server.

Methods are compared on one server through /generate's per-request `method` override. Closed loop
(`--concurrency`): C clients send streaming requests back to back. Open loop (`--request-rates`):
requests arrive at Poisson times (seeded), however fast the server answers. Levels run one at a
time, the methods interleaved at each load so their ratios are measured close together; /metrics is
scraped around each level for what only the server sees (acceptance, batch size, MBU, MFU), as
`vllm bench serve` does. Writes serve.json, serve.csv and PNG plots to `--out-dir`, and a table.

`--inprocess` also decodes the same prompts with an in-process engine at batch 1 on the same models,
so "what HTTP costs" is a ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from specserve.bench import loadgen, plots, report, scrape
from specserve.bench.prompts import CODE_PROMPTS, mixed_prompts

log = logging.getLogger(__name__)
SETTLE_S = 30.0  # how long to wait after a level for the server to count its requests and go idle


def levels_of(args: argparse.Namespace) -> list[tuple[str, float, int]]:
    """(mode, load, requests) in run order; the methods are interleaved at each of them."""
    out = []
    if args.mode in ("closed", "both"):
        n = args.requests_per_client
        out += [("closed", c, args.num_requests or max(8, n * c)) for c in args.concurrency]
    if args.mode in ("open", "both"):
        for rate in args.request_rates:
            default = 32 if math.isinf(rate) else max(8, math.ceil(args.requests_per_client * rate))
            out.append(("open", rate, args.num_requests or default))
    return out


def check_server(args: argparse.Namespace, http: httpx.Client) -> dict:
    """Fail clearly unless the server is up and offers every method asked for; returns its model card."""
    try:
        http.get("/health").raise_for_status()
    except httpx.HTTPError as e:
        raise SystemExit(
            f"error: the server at {args.url} is not reachable or not healthy ({type(e).__name__}: {e}); "
            "start one with `specserve serve` or pass --url"
        ) from e
    try:
        r = http.get("/v1/models")
        r.raise_for_status()
        card = r.json()["data"][0]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
        raise SystemExit(f"error: GET {args.url}/v1/models failed ({e}); is --api-key right?") from e
    offered = card.get("methods", [loadgen.split_variant(m)[0] for m in args.methods])
    missing = [m for m in args.methods if loadgen.split_variant(m)[0] not in offered]
    if missing:
        raise SystemExit(
            f"error: the server does not offer {', '.join(missing)} (it offers {card['methods']})"
        )
    return card


def wait_for_warm_up(http: httpx.Client, timeout_s: float, poll_s: float = 2.0) -> None:
    """Wait until the server's idle-time warm-up has ended (/health's warm_up_tasks_left: 0; a
    server without it: at once), at most timeout_s: it runs only while the server is idle, and
    a task it started between two levels would stall the next one."""
    deadline, said = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        left = http.get("/health").json().get("warm_up_tasks_left", 0)
        if not left:
            return
        if left != said:
            log.info("waiting for the server's idle-time warm-up: %d tasks left", left)
            said = left
        time.sleep(poll_s)
    log.warning("the server's idle-time warm-up did not end in %.0f s; measuring anyway", timeout_s)


def run_level(
    cfg: loadgen.LoadConfig,
    http: httpx.Client,
    prompts: list[str],
    level: tuple[str, float, int],
    method: str,
    bar: tqdm,
) -> report.LevelResult:
    """One (mode, load, requests) level for one method, with /metrics scraped around it."""
    mode, load, n = level
    bar.set_description(f"{method} {mode} {'c' if mode == 'closed' else 'rate'}={load:g}")
    before = scrape.scrape(http)
    ended = [0]

    def on_done() -> None:
        ended[0] += 1
        bar.update()

    if mode == "closed":
        drive = loadgen.closed_loop(cfg, prompts, method, int(load), n, on_done=on_done)
    else:
        drive = loadgen.open_loop(cfg, prompts, method, load, n, on_done=on_done)
    result = loadgen.run(drive)
    bar.update(n - ended[0])  # requests cancelled or never sent (the bounds) still fill the level's share
    if result.timed_out:
        log.warning("%s %s %g hit --timeout-s; reporting what finished", method, mode, load)
    delta = None
    if scrape.metrics_enabled(before):
        finished = sum(s.ok for s in result.samples)
        base = loadgen.split_variant(method)[0]  # the server labels its metrics by method only
        after = scrape.settled(http, before, base, finished, SETTLE_S)
        delta = scrape.server_delta(before, after, base, result.wall_s)
    return report.summarize(mode, method, load, n, result, delta, cfg.slos)


def run_repeats(
    cfg: loadgen.LoadConfig,
    http: httpx.Client,
    prompts: list[str],
    level: tuple[str, float, int],
    args: argparse.Namespace,
    bar: tqdm,
) -> list[report.LevelResult]:
    """Every method at one level, `args.repeats` times; each repeat starts one method later, so no
    method always runs first (on a machine that drifts, that would bias the ratios)."""
    methods = args.methods
    runs: dict[str, list[report.LevelResult]] = {m: [] for m in methods}
    for m in methods if args.warmup_levels else []:  # unmeasured: graphs compile at a new batch size
        run_level(cfg, http, prompts, level, m, bar)
    for rep in range(args.repeats):
        for m in methods[rep % len(methods) :] + methods[: rep % len(methods)]:
            runs[m].append(run_level(cfg, http, prompts, level, m, bar))
    return [report.median_run(runs[m]) for m in methods]


def warm_up(cfg: loadgen.LoadConfig, prompts: list[str], methods: list[str], n: int) -> None:
    for method in methods:
        run = loadgen.run(loadgen.closed_loop(cfg, prompts, method, 1, n)) if n else None
        if run and not all(s.ok for s in run.samples):
            raise SystemExit(f"error: warm-up requests with method {method} failed: {run.samples[0].error}")


def run(args: argparse.Namespace, texts: list[str], load: Callable[[str], Any]) -> int:
    """Run the sweep `args` describes (`specserve bench serve`'s flags); `texts` are the prompts
    (none: the built-in code prompts); `load(method)` loads the models for --inprocess."""
    if args.inprocess and (args.k == "auto" or any(m.endswith(":auto") for m in args.methods)):
        raise SystemExit("error: --inprocess compares at a fixed K; pass a number to --k")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the progress bar
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    cfg = loadgen.LoadConfig(
        url=args.url.rstrip("/"),
        max_tokens=args.max_tokens,
        timeout_s=args.timeout_s,
        duration_s=args.duration_s,
        k=args.k,
        api_key=args.api_key,
        seed=args.seed,
        range_ratio=args.random_range_ratio,
        slos=dict(args.goodput) if args.goodput else None,
        workload=args.workload,
    )
    prompts = texts or (mixed_prompts() if args.workload == "realistic" else CODE_PROMPTS)
    levels = levels_of(args)
    with httpx.Client(base_url=cfg.url, headers=headers, timeout=10.0) as http:
        card = check_server(args, http)
        if args.wait_warm_up_s:
            wait_for_warm_up(http, args.wait_warm_up_s)
        if not scrape.metrics_enabled(scrape.scrape(http)):
            log.warning(
                "the server's metrics are off (--no-metrics?): acceptance, batch size, MBU, MFU stay empty"
            )
        warm_up(cfg, prompts, args.methods, args.warmup)
        t0 = time.perf_counter()
        total = sum(n for *_, n in levels) * len(args.methods) * (args.repeats + args.warmup_levels)
        with tqdm(total=total, desc="bench serve", file=sys.stderr) as bar:
            results = [r for lv in levels for r in run_repeats(cfg, http, prompts, lv, args, bar)]
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    out = {"benchmark": "serve", "config": config, "server": card, "wall_s": time.perf_counter() - t0}
    if args.inprocess:
        out["inprocess"] = {m: inprocess_compare(args, prompts, m, results, load) for m in args.methods}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out["ratios"] = report.ratios(results)  # every method over none, per level, with a 95% CI
    report.write_json(args.out_dir / "serve.json", out, results)
    report.write_csv(args.out_dir / "serve.csv", results)
    written = [] if args.no_plots else plots.write_plots(results, args.out_dir)
    sys.stdout.write(report.format_table(results) + "\n")
    if out["ratios"]:
        sys.stdout.write(report.format_ratios(out["ratios"]) + "\n")
    for m, base in out.get("inprocess", {}).items():
        sys.stdout.write(f"in-process {m}: {json.dumps(report.jsonable(base))}\n")
    names = ", ".join(p.name for p in written)
    sys.stdout.write(f"wrote {args.out_dir}/serve.json, serve.csv{', ' + names if names else ''}\n")
    return 0


def inprocess_compare(
    args: argparse.Namespace, prompts: list[str], method: str, results: list, load: Callable[[str], Any]
) -> dict:
    base = inprocess_baseline(args, prompts, method, load)
    http1 = next((r for r in results if r.method == method and r.concurrency == 1), None)
    if http1 and base["output_tokens_per_s"]:
        base["http_vs_inprocess_tokens_per_s"] = http1.output_tokens_per_s / base["output_tokens_per_s"]
        if http1.ttft_s.p50 is not None:
            base["http_added_ttft_s"] = http1.ttft_s.p50 - base["ttft_s"].p50
    return base


def inprocess_baseline(
    args: argparse.Namespace, prompts: list[str], method: str, load: Callable[[str], Any]
) -> dict:
    """Decode the same prompts one at a time in this process, on the server's models."""
    from specserve.decoding.engine import Engine
    from specserve.decoding.params import SamplingParams, SpecParams

    method, k = loadgen.split_variant(method)
    models = load(method)
    tok = models.target.tokenizer
    draft = models.draft.model if models.draft else None
    engine = Engine(models.target.model, draft, medusa=models.medusa, eagle=models.eagle, max_batch_size=1)
    spec = SpecParams(method, int(k or args.k or 4))
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
        "ttft_s": report.percentiles([r.stats.ttft_s for r in res]),
    }
