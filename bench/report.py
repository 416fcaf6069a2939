"""Aggregation of a load level into a `LevelResult`, and the JSON / CSV / table outputs.

Client-side latencies (vLLM's definitions): TTFT = send to the first token event; ITL = gaps
between a request's successive token events (a speculative step may bring several tokens in one
event); TPOT per request = (e2e - TTFT) / (tokens - 1); e2e = send to the stream's end. Each is
reported as mean, p50, p90, p99 over the completed requests (ITL over all their gaps), with
numpy's default (linear) percentile interpolation.

Goodput (as `vllm bench serve --goodput`): completed requests per second that met every SLO given
(TTFT, TPOT and e2e, each in ms, compared per request). Tokens per second per user: the mean over
completed requests of (tokens - 1) / (e2e - TTFT) = 1 / TPOT, the speed a reader sees once the
answer starts; its trade against output tokens per second is the Pareto plot's.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np

from specserve.bench.loadgen import LevelRun
from specserve.bench.scrape import ServerDelta

PERCENTILES = (50, 90, 99)
DISTS = ("ttft_s", "tpot_s", "itl_s", "e2e_s")


@dataclass
class Dist:
    n: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


def percentiles(values: list[float]) -> Dist:
    """Mean and p50 / p90 / p99 (linear interpolation between closest ranks); all None when empty."""
    if not values:
        return Dist()
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = (float(np.percentile(a, q)) for q in PERCENTILES)
    return Dist(len(a), float(a.mean()), p50, p90, p99)


@dataclass
class LevelResult:
    mode: str  # "closed" or "open"
    method: str
    concurrency: int | None  # closed loop
    request_rate: float | None  # open loop, req/s (inf: all at once)
    num_requests: int  # planned
    sent: int
    completed: int
    failed: int
    wall_s: float
    requests_per_s: float
    output_tokens: int  # client-side, completed requests
    output_tokens_per_s: float
    server_output_tokens: float | None  # delta of specserve_generation_tokens_total{method}
    ttft_s: Dist
    tpot_s: Dist
    itl_s: Dist
    e2e_s: Dist
    acceptance_rate: float | None  # /metrics deltas (None for method none)
    mean_accepted_length: float | None
    mean_batch_size: float | None  # decode steps' rows, from the step_batch_size histogram delta
    mbu: float | None
    mfu: float | None
    request_mean_batch_size: float | None  # mean of the per-request stats
    request_acceptance_rate: float | None
    tokens_per_s_per_user: float | None = None  # mean of 1 / TPOT over completed requests
    goodput_requests_per_s: float | None = None  # completed requests meeting every SLO, per second
    slo_met: int | None = None  # how many did (None: no --goodput)
    runs_output_tokens_per_s: list[float] = field(default_factory=list)  # every repeat, in run order
    errors: list[str] = field(default_factory=list)  # distinct messages, at most 5
    server: ServerDelta | None = None
    requests: list[dict] = field(default_factory=list)  # per request: the recorded samples

    @property
    def load(self) -> str:
        return f"c={self.concurrency}" if self.mode == "closed" else f"rate={self.request_rate:g}"


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _tpot(s) -> float | None:
    return (s.e2e_s - s.ttft_s) / (s.tokens - 1) if s.tokens > 1 and s.ttft_s is not None else None


def meets(s, slos: dict[str, float]) -> bool:
    """Whether a completed request met every SLO (seconds); a one-token answer has no TPOT to miss."""
    got = {"ttft": s.ttft_s, "tpot": _tpot(s), "e2e": s.e2e_s}
    if got["tpot"] is None and s.tokens <= 1:
        got["tpot"] = 0.0
    return all(got[k] is not None and got[k] <= limit for k, limit in slos.items())


def summarize(
    mode: str,
    method: str,
    load: float,
    num_requests: int,
    run: LevelRun,
    server: ServerDelta | None,
    slos: dict[str, float] | None = None,
) -> LevelResult:
    ok = [s for s in run.samples if s.ok]
    tokens = sum(s.tokens for s in ok)
    wall = run.wall_s
    tpot = [t for t in map(_tpot, ok) if t is not None]
    met = sum(meets(s, slos) for s in ok) if slos else None
    return LevelResult(
        mode=mode,
        method=method,
        concurrency=int(load) if mode == "closed" else None,
        request_rate=float(load) if mode == "open" else None,
        num_requests=num_requests,
        sent=run.sent,
        completed=len(ok),
        failed=run.sent - len(ok),
        wall_s=wall,
        requests_per_s=len(ok) / wall if wall else 0.0,
        output_tokens=tokens,
        output_tokens_per_s=tokens / wall if wall else 0.0,
        server_output_tokens=server.generation_tokens if server else None,
        ttft_s=percentiles([s.ttft_s for s in ok if s.ttft_s is not None]),
        tpot_s=percentiles(tpot),
        itl_s=percentiles([g for s in ok for g in s.itl_s]),
        e2e_s=percentiles([s.e2e_s for s in ok]),
        acceptance_rate=server.acceptance_rate if server else None,
        mean_accepted_length=server.mean_accepted_length if server else None,
        mean_batch_size=server.mean_batch_size if server else None,
        mbu=server.mbu if server else None,
        mfu=server.mfu if server else None,
        request_mean_batch_size=_mean(
            [s.stats["mean_batch_size"] for s in ok if "mean_batch_size" in s.stats]
        ),
        request_acceptance_rate=_mean(
            [s.stats["acceptance_rate"] for s in ok if s.stats.get("draft_tokens")]
        ),
        tokens_per_s_per_user=_mean([1 / t for t in tpot if t > 0]),
        goodput_requests_per_s=(met / wall if wall else 0.0) if met is not None else None,
        slo_met=met,
        errors=sorted({s.error for s in run.samples if not s.ok})[:5],
        server=server,
        requests=[
            {k: v for k, v in asdict(s).items() if k != "stats"} | {"server_stats": s.stats}
            for s in run.samples
        ],
    )


def median_run(runs: list[LevelResult]) -> LevelResult:
    """The repeat with the median output tok/s (the lower one of an even count), every repeat's tok/s
    attached: one real run's figures, all consistent with each other, rather than a blend."""
    chosen = sorted(runs, key=lambda r: r.output_tokens_per_s)[(len(runs) - 1) // 2]
    chosen.runs_output_tokens_per_s = [r.output_tokens_per_s for r in runs]
    return chosen


T95 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23]  # t(0.975) for 1..10 d.o.f.


def paired_ratio(a: list[float], b: list[float]) -> dict[str, float] | None:
    """a / b over paired repeats (repeat i of each ran back to back): the geometric mean of the
    per-repeat ratios with its 95% t-interval (None below two pairs)."""
    logs = [math.log(x / y) for x, y in zip(a, b, strict=False) if x > 0 and y > 0]
    if len(logs) < 2:
        return None
    n, mean = len(logs), statistics.fmean(logs)
    half = (T95[n - 2] if n - 1 <= len(T95) else 1.96) * statistics.stdev(logs) / math.sqrt(n)
    return {"ratio": math.exp(mean), "lo": math.exp(mean - half), "hi": math.exp(mean + half), "pairs": n}


def ratios(levels: list[LevelResult], base: str = "none") -> list[dict]:
    """Every method's output tok/s over `base`'s at each level, with a confidence interval."""
    out = []
    bases = {(r.mode, r.load): r for r in levels if r.method == base}
    for r in levels:
        ref = bases.get((r.mode, r.load))
        if r.method == base or ref is None:
            continue
        ci = paired_ratio(r.runs_output_tokens_per_s, ref.runs_output_tokens_per_s)
        if ci is not None:
            out.append({"mode": r.mode, "load": r.load, "method": r.method, "vs": base} | ci)
    return out


def format_ratios(rows: list[dict]) -> str:
    return "\n".join(
        f"{r['mode']} {r['load']:>6} {r['method']:<12} {r['ratio']:.2f}x {r['vs']} "
        f"[{r['lo']:.2f}, {r['hi']:.2f}] ({r['pairs']} repeats)"
        for r in rows
    )


def jsonable(obj):
    """JSON without NaN / Infinity (not JSON): inf becomes the string "inf", NaN null."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(asdict(obj))
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_json(path: Path, report: dict, levels: list[LevelResult]) -> None:
    path.write_text(json.dumps(jsonable(report | {"levels": [asdict(r) for r in levels]}), indent=2))


def csv_row(r: LevelResult) -> dict:
    """One flat row: scalars as they are, each Dist as <name>_<stat>, the server deltas as server_<name>."""
    row: dict = {}
    for f in fields(r):
        v = getattr(r, f.name)
        if f.name in DISTS:
            row |= {f"{f.name.removesuffix('_s')}_{k}_s": x for k, x in asdict(v).items() if k != "n"}
        elif f.name == "server":
            server = asdict(v) if v else {g.name: None for g in fields(ServerDelta)}
            row |= {f"server_{k}": x for k, x in server.items()}
        elif f.name == "errors":
            row[f.name] = " | ".join(v)
        elif f.name == "runs_output_tokens_per_s":
            row[f.name] = " ".join(f"{x:.1f}" for x in v)
        elif f.name != "requests":
            row[f.name] = v
    return row


def write_csv(path: Path, levels: list[LevelResult]) -> None:
    rows = [csv_row(r) for r in levels]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["mode"])
        w.writeheader()
        w.writerows(rows)


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(levels: list[LevelResult]) -> str:
    head = (
        f"{'mode':<7}{'method':<8}{'load':>10}{'ok':>5}{'fail':>5}{'req/s':>8}{'tok/s':>9}"
        f"{'ttft p50':>10}{'tpot p50':>10}{'itl p50':>9}{'e2e p50':>9}{'e2e p99':>9}"
        f"{'batch':>7}{'accept':>8}{'acc len':>8}{'mbu':>10}{'mfu':>10}"
    )
    goodput = any(r.goodput_requests_per_s is not None for r in levels)
    head += f"{'tok/s/user':>11}" + (f"{'goodput':>9}{'met':>6}" if goodput else "")
    lines = [head, "-" * len(head)]
    for r in levels:
        lines.append(
            f"{r.mode:<7}{r.method:<8}{r.load:>10}{r.completed:>5}{r.failed:>5}"
            f"{r.requests_per_s:>8.2f}{r.output_tokens_per_s:>9.1f}"
            f"{_f(r.ttft_s.p50, '.4f'):>10}{_f(r.tpot_s.p50, '.4f'):>10}{_f(r.itl_s.p50, '.4f'):>9}"
            f"{_f(r.e2e_s.p50, '.3f'):>9}{_f(r.e2e_s.p99, '.3f'):>9}{_f(r.mean_batch_size, '.2f'):>7}"
            f"{_f(r.acceptance_rate, '.2f'):>8}{_f(r.mean_accepted_length, '.2f'):>8}"
            f"{_f(r.mbu, '.2e'):>10}{_f(r.mfu, '.2e'):>10}{_f(r.tokens_per_s_per_user, '.1f'):>11}"
            + (f"{_f(r.goodput_requests_per_s, '.2f'):>9}{_f(r.slo_met, 'd'):>6}" if goodput else "")
        )
    return "\n".join(lines)
