import json

from specserve.cli.main import main


def test_bench_overhead_reports_on_off_ratio(tiny_paths, tmp_path, capsys):
    out = tmp_path / "o.json"
    argv = ["bench", "overhead", "--target", tiny_paths["target"], "--draft", tiny_paths["draft"],
            "--dtype", "float64", "--max-new-tokens", "4", "--repeats", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["on_over_off"] == r["tokens_per_s_on"] / r["tokens_per_s_off"] and r["tokens_per_s_on"] > 0
    assert "on/off" in capsys.readouterr().out
