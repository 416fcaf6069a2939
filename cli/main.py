"""`specserve` command line: serve, generate, bench, train."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from specserve.cli import bench, generate, serve, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub)
    generate.add_parser(sub)
    bench.add_bench_parser(sub)
    train.add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None) or os.environ.get("SPECSERVE_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
