"""`specserve` command line: serve, generate, bench, train."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from bench import decode as bench_decode
    from bench import overhead as bench_overhead
    from bench import serve as bench_serve
    from bench import tree as bench_tree
    from server import generate_cmd, serve_cmd
    from server.cli_train import add_train_parser

    parser = argparse.ArgumentParser(prog="specserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd.add_parser(sub)
    generate_cmd.add_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks and load tests").add_subparsers(
        dest="bench", required=True
    )
    bench_decode.add_parser(bench)
    bench_serve.add_parser(bench)
    bench_tree.add_parser(bench)
    bench_overhead.add_parser(bench)
    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None) or os.environ.get("SPECSERVE_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file weight-loading bars drown the command's own output
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
