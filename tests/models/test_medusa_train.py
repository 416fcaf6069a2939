"""`train medusa` end to end on a tiny target and a handful of source files."""

from __future__ import annotations

import json

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.models.loading import load_model
from specserve.models.medusa import MedusaHeads
from specserve.models.medusa_train import MedusaTrainConfig, train_medusa

CODE = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n"]


def test_train_medusa_tiny(tiny_paths, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(24):  # distinct files (the corpus deduplicates by content)
        (src / f"m{i}.py").write_text(f"# module {i}\n" + "".join(CODE) * 3)
    cfg = MedusaTrainConfig(
        num_heads=2, steps=4, batch_size=2, seq_len=32, warmup_steps=2, val_windows=4, val_per_mille=300
    )
    out = tmp_path / "heads"
    report = train_medusa(
        tiny_paths["target"], out, cfg, work_dir=tmp_path / "work", roots=[src], device="cpu"
    )
    assert [a["head"] for a in report["accuracy"]] == [0, 1]
    assert all(0.0 <= a["top1"] <= a["top5"] <= 1.0 for a in report["accuracy"])
    assert report["history"][-1]["step"] == 4 and len(report["history"][-1]["losses"]) == 2
    assert json.loads((out / "training.json").read_text())["tokens_seen"] == 4 * 2 * 32
    assert "| head | guesses |" in (out / "README.md").read_text()
    target = load_model(tiny_paths["target"], dtype="float64")
    heads = MedusaHeads.load(out, target.model)
    assert heads.config.num_heads == 2 and heads.config.target == tiny_paths["target"]
    # the trained heads decode losslessly
    engine = Engine(target.model, medusa=heads)
    prompt = target.tokenizer.encode(CODE[0])
    got = engine.generate([prompt], SamplingParams(max_new_tokens=16), SpecParams("medusa"))[0]
    want = Engine(target.model).generate([prompt], SamplingParams(max_new_tokens=16), SpecParams())[0]
    assert got.token_ids == want.token_ids


def test_train_medusa_cli_refuses_bad_input(tiny_paths, tmp_path):
    import pytest

    from specserve.cli.main import main

    with pytest.raises(SystemExit, match="--steps must be >= 1, got 0"):
        main(["train", "medusa", "--target", tiny_paths["target"], "--out", str(tmp_path), "--steps", "0"])
    with pytest.raises(SystemExit, match="is not a directory"):
        main(["train", "medusa", "--target", str(tmp_path / "nope"), "--out", str(tmp_path), "--steps", "1"])
    with pytest.raises(SystemExit, match="--max-seconds must be > 0, got 0.0"):
        main(
            [
                "train",
                "medusa",
                "--target",
                tiny_paths["target"],
                "--out",
                str(tmp_path),
                "--max-seconds",
                "0",
            ]
        )


def test_train_medusa_on_given_windows_within_a_time_budget(tiny_paths, tmp_path, monkeypatch):
    """The recipe hands over its own shards (no corpus scan); a budget ends the run early, whole."""
    import numpy as np
    from clock import FakeClock

    from specserve.models import medusa_train

    FakeClock().install(monkeypatch, medusa_train)

    from specserve.models.suite.train import TokenWindows

    tokens = np.random.default_rng(0).integers(0, 90, 5000).astype(np.uint16)
    windows = (TokenWindows(tokens, 32), TokenWindows(tokens[:500], 32))
    cfg = MedusaTrainConfig(num_heads=2, steps=10_000_000, batch_size=2, seq_len=32, max_seconds=0.5)
    out = tmp_path / "heads"
    work = tmp_path / "work"
    report = train_medusa(tiny_paths["target"], out, cfg, work, roots=None, windows=windows, device="cpu")
    assert 25 < report["steps"] < cfg.steps
    assert report["tokens_seen"] == report["steps"] * 2 * 32
    assert report["history"][-1]["step"] == report["steps"]  # the last step is logged
    assert not (work / "shards").exists() and (out / "config.json").is_file()
