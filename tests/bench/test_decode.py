"""`specserve bench decode` runs end to end on tiny models and reports what it promises."""

from __future__ import annotations

import json

from server.cli import main


def test_bench_decode_json(tiny_paths, tmp_path, capsys):
    out = tmp_path / "decode.json"
    argv = ["bench", "decode", "--target", tiny_paths["target"], "--draft", tiny_paths["draft"],
            "--dtype", "float64", "--k", "2", "--batch-sizes", "1", "2", "--max-new-tokens", "8",
            "--num-prompts", "2", "--repeats", "1", "--warmup", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    hf = {r["method"] for r in rows if r["impl"] == "hf"}
    assert hf == {"generate", "assisted", "prompt_lookup"}
    ours = [r for r in rows if r["impl"] == "specserve"]
    assert {(r["method"], r["batch_size"]) for r in ours} == {
        (m, b) for m in ("none", "draft", "ngram") for b in (1, 2)
    }
    assert all(r["matches_hf_greedy"] for r in ours)  # lossless, checked in the benchmark too
    assert all(r["tokens_per_s"] > 0 and len(r["runs_s"]) == 1 for r in rows)
    none1 = next(r for r in ours if r["method"] == "none" and r["batch_size"] == 1)
    assert none1["ratios"]["vs_none"] == 1.0 and "vs_hf_generate" in none1["ratios"]
    assert "tok/s" in capsys.readouterr().out
