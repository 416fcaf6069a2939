"""`specserve bench decode` runs end to end on tiny models and reports what it promises."""

from __future__ import annotations

import json

from specserve.cli.main import main


def test_bench_decode_json(tiny_paths, tmp_path, capsys):
    out = tmp_path / "decode.json"
    argv = ["bench", "decode", "--target", tiny_paths["target"], "--draft", tiny_paths["draft"],
            "--dtype", "float64", "--k", "2", "--batch-sizes", "1", "2", "--max-new-tokens", "8",
            "--num-prompts", "2", "--repeats", "1", "--warmup", "0", "--out", str(out),
            "--compile", "on", "off"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    hf = {r["method"] for r in rows if r["impl"] == "hf"}
    assert hf == {"generate", "assisted", "prompt_lookup"}
    ours = [r for r in rows if r["impl"] == "specserve"]
    assert {(r["method"], r["batch_size"], r["compile"]) for r in ours} == {
        (m, b, c) for m in ("none", "draft", "ngram") for b in (1, 2) for c in ("on", "off")
    }
    assert all(r["matches_hf_greedy"] for r in ours)  # lossless, compiled or not
    assert all(r["tokens_per_s"] > 0 and len(r["runs_s"]) == 1 for r in rows)
    assert all(r["mbu"] > 0 and r["mfu"] > 0 for r in ours) and report["peaks"]["bytes_per_s"] > 0
    none1 = next(r for r in ours if r["method"] == "none" and r["batch_size"] == 1 and r["compile"] == "on")
    assert none1["ratios"]["vs_none"] == 1.0 and "vs_hf_generate" in none1["ratios"]
    assert "vs_eager" in none1["ratios"]  # compiled against eager, same run
    assert "tok/s" in capsys.readouterr().out
    for png in (out.with_suffix(".png"), out.with_name("decode_compiled.png")):  # speedups, compiled/eager
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_decode_speedup_plot_skips_a_run_without_speculation(tmp_path):
    from specserve.bench.plots import decode_speedup_plot

    only_none = [{"impl": "specserve", "method": "none", "k": 0, "batch_size": 1, "ratios": {"vs_none": 1.0}}]
    assert decode_speedup_plot(only_none, "t", tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
