"""bench/gpu.sh, the one-call GPU benchmark, run on the CPU with tiny models: it must get through
both stages (bench decode, then a server and bench serve) and leave their reports in $OUT, so a
lent GPU is not spent finding a typo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gpu_script_runs_end_to_end_on_cpu(tiny_paths, tmp_path):
    out = tmp_path / "out"
    models = f"--target {tiny_paths['target']} --draft {tiny_paths['draft']}"
    env = os.environ | {
        "DEVICE": "cpu", "DTYPE": "float64", "QUICK": "1", "COMPILE": "off", "SERVE_COMPILE": "off",
        "MODELS": models, "OUT": str(out), "PORT": str(_free_port()), "PY": sys.executable,
        "WHEELS": str(tmp_path / "no-wheels"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
    }  # fmt: skip
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "cuda False" in (out / "device.txt").read_text()
    decode = json.loads((out / "decode.json").read_text())
    got = {(r["method"], r["batch_size"]) for r in decode["results"]}
    assert got == {(m, b) for m in ("none", "draft") for b in (1, 2)}
    levels = json.loads((out / "serve" / "serve.json").read_text())["levels"]
    assert {(r["method"], r["concurrency"]) for r in levels} == {
        (m, c) for m in ("none", "draft:auto", "ngram:auto") for c in (1, 2)
    }
    assert all(r["output_tokens"] > 0 for r in levels)
