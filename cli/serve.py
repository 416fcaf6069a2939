"""`specserve serve`: flags (or SPECSERVE_* variables) -> Settings -> uvicorn."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING

from specserve.cli.options import add_log_level, quiet_transformers

if TYPE_CHECKING:
    from specserve.server.settings import Settings

FLAGS = {  # flag -> help; every one maps to the Settings field of the same name
    "target": "target model: Hub id or local path (default: the bundled suite)",
    "draft": "draft model for method 'draft' (default: the bundled suite's draft)",
    "medusa": "Medusa heads folder for method 'medusa' (default: the bundled suite's heads)",
    "eagle": "EAGLE head folder for method 'eagle' (default: the bundled suite's head)",
    "method": "default method: none, draft, ngram, medusa or eagle (per request: the `speculation` field)",
    "num_speculative_tokens": "candidates per step (1..16), or auto (default: chosen each step)",
    "speculation_schedule": 'K for "auto" by method and batch size, JSON or a JSON file, e.g. '
    '{"draft": {"1": 3, "9": 0}} ("*": every method; default: measured)',
    "max_batch_size": "rows decoded together",
    "max_waiting": "queued requests beyond this get 429",
    "prefix_cache_mb": "MiB of prompt keys/values kept per model for prompts that start alike (256; 0: off)",
    "dtype": "float32, float64, bfloat16 or float16",
    "eagle_dtype": "the EAGLE head's precision: auto (bfloat16 for a float32 target on a bfloat16 CPU), "
    "or a dtype; lossless at any",
    "device": "cpu, cuda, cuda:N or auto",
    "host": "address to bind (default 127.0.0.1)",
    "port": "port (default 8000)",
    "api_key": "require 'Authorization: Bearer KEY' on /v1 and /generate",
    "served_model_name": "the model id clients send",
    "threads": "torch CPU threads, fixed (0: on CPU measured per batch size, 1 to all cores)",
    "request_timeout_s": "seconds before a request is dropped",
    "max_body_bytes": "request bodies above this get 413",
    "peak_bandwidth": "device peak bytes/s for MBU (default: GPU table, else a probe)",
    "peak_flops": "device peak FLOP/s for MFU (default: GPU table, else a probe)",
    "compile": "compiled decode steps: auto (kept where a warm-up measures them faster), on or off",
    "compile_cache": "folder for compiled graphs, kept across restarts (default ~/.cache/specserve/inductor)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible HTTP API")
    for name, help_text in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=help_text)
    p.add_argument("--trust-remote-code", action="store_true", default=None)
    p.add_argument("--no-metrics", dest="metrics", action="store_false", default=None,
                   help="skip Prometheus metrics and per-request bytes/FLOPs accounting")  # fmt: skip
    p.add_argument("--no-idle-warm-up", dest="idle_warm_up", action="store_false", default=None,
                   help="compile and time what start-up leaves at first need, not while idle")  # fmt: skip
    add_log_level(p)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    from pydantic import ValidationError

    from specserve.server.settings import Settings

    given = {
        k: getattr(args, k)
        for k in [*FLAGS, "trust_remote_code", "metrics", "idle_warm_up"]
        if getattr(args, k, None) is not None
    }
    try:
        return Settings(**given)
    except ValidationError as e:
        seen: dict[str, list[str]] = {}  # a union field reports once per member: group by field
        for err in e.errors():
            seen.setdefault(str(err["loc"][0]) if err["loc"] else "settings", []).append(err["msg"])
        problems = "; ".join(f"{field}: {' or '.join(dict.fromkeys(msgs))}" for field, msgs in seen.items())
        raise SystemExit(f"error: {problems}") from e


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from specserve.server.app import create_app

    settings = settings_from_args(args)
    quiet_transformers()
    from specserve.models.loading import preflight

    try:  # one clear line for a model the engine cannot serve, not a traceback from the lifespan
        for path in filter(None, (str(settings.target), settings.draft)):
            preflight(path, settings.trust_remote_code)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    # uvicorn drains on SIGTERM (stop accepting, let requests in flight finish, then the lifespan
    # stops the engine) and then re-raises the signal; answering that with exit 0 marks the
    # shutdown as the clean one it was
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
    )
    return 0
