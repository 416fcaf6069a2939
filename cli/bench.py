"""`specserve bench ...`: the flags of every benchmark, and handlers that load what each needs.

The benchmarks themselves live in `specserve.bench`; the handlers import them (and torch) only
when they run. `bench serve` is an HTTP client: it loads models only for `--inprocess`."""

from __future__ import annotations

import argparse
from pathlib import Path

from specserve.bench.prompts import WORKLOADS
from specserve.cli.argtypes import _count, _duration, _k, _positive, _rate, _ratio, _seconds, _slo, _variant
from specserve.cli.options import add_compile_args, add_model_args, add_prompt_args, load_models, read_prompts
from specserve.decoding.params import METHODS


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks and load tests").add_subparsers(
        dest="bench", required=True
    )
    for add in (_add_decode, _add_serve, _add_tree, _add_overhead):
        add(bench)


def _add_decode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="in-process decode benchmark against HF generate()")
    add_model_args(p)
    add_prompt_args(p)
    p.add_argument("--methods", nargs="+", default=["none", "draft", "ngram"], choices=list(METHODS))
    p.add_argument("--k", type=int, nargs="+", default=[2, 4], help="speculative tokens to sweep")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--num-prompts", type=int, default=8, help="prompts per run (cycled to fill the batch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face peers")
    p.add_argument("--ignore-eos", action="store_true", help="every request runs to --max-new-tokens")
    p.add_argument("--out", type=Path, default=Path("bench_results/decode.json"))
    add_compile_args(p, several=True)
    p.set_defaults(func=_decode)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP load test against a running server")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--api-key", default=None)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["none"],
        type=_variant,
        help="none, draft, ngram, medusa, eagle; METHOD:K or METHOD:auto gives one its own K (draft:4)",
    )
    p.add_argument(
        "--k",
        type=_k,
        default=None,
        help="num_speculative_tokens override: K or auto (default: the server's)",
    )
    p.add_argument("--mode", choices=["closed", "open", "both"], default="closed")
    p.add_argument(
        "--concurrency", type=_positive, nargs="+", default=[1, 2, 4, 8, 16, 32], help="closed loop"
    )
    p.add_argument(
        "--request-rates",
        type=_rate,
        nargs="+",
        default=[1.0, 2.0, 4.0, 8.0],
        help="open loop, req/s; inf: all at once",
    )
    p.add_argument(
        "--num-requests",
        type=_count,
        default=0,
        help="per level (default: closed max(8, N x concurrency); open max(8, N x rate), 32 at inf; "
        "N = --requests-per-client)",
    )
    p.add_argument(
        "--requests-per-client",
        type=_positive,
        default=4,
        help="N in the default requests per level: longer levels, less noise",
    )
    p.add_argument(
        "--workload",
        choices=list(WORKLOADS),
        default="realistic",
        help="; ".join(f"{k}: {v}" for k, v in WORKLOADS.items()),
    )
    p.add_argument("--max-tokens", type=_positive, default=None, help="per request (default: the workload's)")
    p.add_argument(
        "--duration-s",
        type=_duration,
        default=0.0,
        help="per level: send nothing after this (0: no bound)",
    )
    p.add_argument(
        "--timeout-s", type=_seconds, default=600.0, help="per level: cancel what is still in flight"
    )
    p.add_argument("--warmup", type=_count, default=1, help="unmeasured requests per method before the sweep")
    p.add_argument(
        "--wait-warm-up-s",
        type=_seconds,
        default=900.0,
        help="first wait (at most this long) for the server's idle-time warm-up (graphs for batches, "
        "step costs, other methods: /health's warm_up_tasks_left) to end, so it stalls no level; 0: no wait",
    )
    p.add_argument(
        "--warmup-levels",
        action="store_true",
        help="run every method once at each level, unmeasured, before its repeats (a fresh server "
        "compiles graphs and times its steps at each new batch size)",
    )
    p.add_argument(
        "--random-range-ratio",
        type=_ratio,
        default=0.0,
        help="output lengths uniform in [L(1-r), L(1+r)], L = --max-tokens, the same for every method; "
        "0: all L (plain decoding then runs in lockstep, rows joining and leaving together)",
    )
    p.add_argument(
        "--repeats",
        type=_positive,
        default=1,
        help="run each level this many times, the methods taking turns (their order rotating), and "
        "report the run with the median tok/s; every run's tok/s is in the JSON and CSV",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals and output lengths")
    p.add_argument(
        "--goodput",
        nargs="+",
        type=_slo,
        default=None,
        metavar="KEY:MS",
        help="SLOs (ttft, tpot, e2e in ms, as vllm bench serve): report goodput, the completed requests "
        "per second that met every one",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--inprocess", action="store_true", help="also decode in-process at batch 1 (model flags)")
    p.add_argument(
        "--out-dir", type=Path, default=Path("bench_results/serve"), help="serve.json, serve.csv, *.png"
    )
    add_prompt_args(p)
    add_model_args(p)
    p.set_defaults(func=_serve)


def _add_tree(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tree", help="fit the Medusa tree to the heads and this machine")
    add_model_args(p)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--fit-batch-size", type=int, default=1, help="batch size the stored tree is chosen for")
    p.add_argument("--max-rank", type=int, default=8, help="top-k ranks a node may use")
    p.add_argument("--context", type=int, default=256, help="cached tokens during the cost measurement")
    p.add_argument("--val-windows", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work-dir", type=Path, default=Path("runs/medusa"), help="corpus shards live here")
    p.add_argument("--no-store", action="store_true", help="report only; leave the heads' config alone")
    add_compile_args(p)
    p.set_defaults(func=_tree)


def _add_overhead(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("overhead", help="decode throughput with metrics recording on vs off")
    add_model_args(p)
    p.add_argument("--method", choices=list(METHODS), default="draft")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench_results/overhead.json"))
    p.set_defaults(func=_overhead)


def _decode(args: argparse.Namespace) -> int:
    from specserve.bench import decode

    if args.repeats < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
        raise SystemExit("error: need --repeats >= 1, --warmup >= 0 and batch sizes >= 1")
    models = load_models(
        args,
        "draft" in args.methods,
        need_medusa="medusa" in args.methods,
        need_eagle="eagle" in args.methods,
    )
    return decode.run(args, models, [t for _, t in read_prompts(args)])


def _serve(args: argparse.Namespace) -> int:
    from specserve.bench import serve
    from specserve.bench.prompts import MAX_TOKENS

    args.max_tokens = args.max_tokens or MAX_TOKENS[args.workload]

    def load(method: str):  # --inprocess only: the server's models, in this process
        return load_models(
            args, method == "draft", need_medusa=method == "medusa", need_eagle=method == "eagle"
        )

    return serve.run(args, [t for _, t in read_prompts(args)], load)


def _tree(args: argparse.Namespace) -> int:
    from specserve.bench import tree

    return tree.run(args, load_models(args, need_draft=False, need_medusa=True))


def _overhead(args: argparse.Namespace) -> int:
    from specserve.bench import overhead

    need = {m: args.method == m.removeprefix("need_") for m in ("need_draft", "need_medusa", "need_eagle")}
    return overhead.run(args, load_models(args, **need))
