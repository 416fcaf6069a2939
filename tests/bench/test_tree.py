"""`bench tree`: the greedy tree growth and the fitted tree stored beside the heads."""

from __future__ import annotations

import json

import pytest
import torch

from specserve.bench.tree import grow_trees, rank_accuracy
from specserve.decoding.tree import build_tree
from specserve.models.medusa import MedusaConfig, MedusaHeads


def test_grow_trees_follows_path_probability():
    acc = [[0.6, 0.2, 0.1], [0.5, 0.1, 0.05]]  # head 0, head 1 accuracy by rank
    trees = grow_trees(acc, 4)
    paths = [t[0] for t in trees]
    assert paths[0] == [(0,)]
    assert paths[1] == [(0,), (0, 0)]  # 0.6 * 0.5 = 0.30 beats rank 1 of head 0 (0.2)
    assert paths[2] == [(0,), (0, 0), (1,)]
    assert trees[2][1] == pytest.approx(0.6 + 0.3 + 0.2)
    for p, _ in trees:
        build_tree(p, num_heads=2)  # every grown tree is a valid tree


def test_rank_accuracy_counts_agreement(tiny):
    model = tiny["target"].model
    cfg = MedusaConfig(num_heads=2, hidden_size=model.config.hidden_size, vocab_size=model.config.vocab_size)
    heads = MedusaHeads(cfg, model.lm_head).double()  # zero-init blocks: each head repeats the lm_head
    windows = torch.randint(2, 300, (2, 24))
    acc = rank_accuracy(model, heads, windows, max_rank=4)
    assert len(acc) == 2 and len(acc[0]) == 4
    assert all(0.0 <= a <= 1.0 for row in acc for a in row)
    assert sum(acc[0]) <= 1.0 + 1e-9  # ranks are exclusive guesses


def test_bench_tree_stores_the_tree(tiny_paths, tmp_path, monkeypatch, capsys):
    from specserve.cli.main import main
    from specserve.models.suite.train import TokenWindows

    model_dir = tiny_paths["target"]
    from specserve.models.loading import load_model

    target = load_model(model_dir, dtype="float64")
    cfg = MedusaConfig(
        num_heads=2, hidden_size=64, vocab_size=target.model.config.vocab_size, target=model_dir
    )
    heads_dir = tmp_path / "heads"
    MedusaHeads(cfg, target.model.lm_head).save(heads_dir)
    tokens = torch.randint(2, 300, (4000,)).numpy()
    monkeypatch.setattr(
        "specserve.models.medusa_train.corpus_windows",
        lambda tok, work, cfg, roots: (TokenWindows(tokens, cfg.seq_len), TokenWindows(tokens, cfg.seq_len)),
    )
    argv = ["bench", "tree", "--target", model_dir, "--medusa", str(heads_dir), "--dtype", "float64",
            "--sizes", "1", "2", "4", "--batch-sizes", "1", "2", "--context", "16", "--val-windows", "2",
            "--repeats", "1", "--compile", "on"]  # fmt: skip
    assert main(argv) == 0
    stored = json.loads((heads_dir / "config.json").read_text())["tree"]
    report = json.loads((heads_dir / "tree.json").read_text())
    assert stored == report["tree"] and 1 <= len(stored) <= 4
    assert report["compiled"]  # timed as the server runs it
    assert {(t["batch_size"], t["nodes"]) for t in report["table"]} == {
        (b, n) for b in (1, 2) for n in (1, 2, 4)
    }
    assert "best tree at batch 1" in capsys.readouterr().out
    assert MedusaHeads.load(heads_dir, target.model).config.tree == stored  # the engine will use it
