"""A drafter's reduced vocabulary: the projection's rows, a draft model folder's `draft_vocab.json`
applied at load (bytes read counted), and `train draft-vocab` end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_models import small_model

from specserve.cli.main import main
from specserve.models import draft_vocab
from specserve.models.loading import load_models


def test_frequent_tokens_are_the_most_common_ids_sorted():
    ids, coverage = draft_vocab.frequent_tokens(np.array([5, 5, 5, 1, 1, 7, 7, 3], dtype=np.uint16), 8, 3)
    assert ids.tolist() == [1, 5, 7] and coverage == 7 / 8  # 1 and 7 tie: both above 3
    assert draft_vocab.frequent_tokens(np.array([2, 6]), 8, 1)[0].tolist() == [2]  # a tie: the lower id


def test_rows_of_keeps_the_chosen_rows_sorted_and_refuses_bad_ids():
    lm_head = small_model().lm_head  # [12, 32]
    new, ids = draft_vocab.rows_of(lm_head, torch.tensor([7, 1, 4]), 12)
    assert ids.tolist() == [1, 4, 7] and torch.equal(new.weight, lm_head.weight[ids])
    assert not new.weight.requires_grad and new.weight.data_ptr() != lm_head.weight.data_ptr()
    for bad in ([], [2, 2], [0, 12], [-1, 3]):
        with pytest.raises(ValueError, match="distinct token ids in 0..11"):
            draft_vocab.rows_of(lm_head, torch.tensor(bad, dtype=torch.long), 12)


def test_a_draft_folder_with_a_vocabulary_loads_restricted(tiny_paths, tmp_path):
    folder = tmp_path / "draft"
    shutil.copytree(tiny_paths["draft"], folder)
    whole = load_models(tiny_paths["target"], str(folder)).draft
    draft_vocab.write(folder, torch.tensor([5, 3, 9, 0]), 0.5)
    assert json.loads((folder / draft_vocab.VOCAB_FILE).read_text())["size"] == 4
    models = load_models(tiny_paths["target"], str(folder))
    d = models.draft
    assert d.model.draft_vocab.tolist() == [0, 3, 5, 9] and d.model.draft_vocab_size == 320
    assert d.model.get_output_embeddings().weight.shape[0] == 4
    assert d.model.get_input_embeddings().weight.shape[0] == 320  # lookups stay whole
    H, elt = whole.model.config.hidden_size, 4  # float32
    assert whole.weight_bytes - d.weight_bytes == (320 - 4) * H * elt
    assert models.target.model.get_output_embeddings().weight.shape[0] == 320


def test_cli_writes_a_draft_vocabulary_then_generates_as_plain(tiny_paths, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):  # distinct files (the corpus deduplicates by content)
        (src / f"m{i}.py").write_text(f"# module {i}\n" + "def add(a, b):\n    return a + b\n" * 20)
    folder = tmp_path / "draft"
    shutil.copytree(tiny_paths["draft"], folder)
    argv = ["train", "draft-vocab", "--draft", str(folder), "--size", "16", "--corpus-dir", str(src),
            "--work-dir", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((folder / draft_vocab.VOCAB_FILE).read_text())
    assert (
        record["size"] == 16 == len(set(record["token_ids"]))
        and 0 < record["coverage_of_training_tokens"] <= 1
    )
    with pytest.raises(SystemExit, match="needs 1..320 tokens, got 0"):
        main([*argv[:5], "0", *argv[6:]])
    out = {}
    for method in ("none", "draft"):
        capsys.readouterr()
        gen = ["generate", "--target", tiny_paths["target"], "--draft", str(folder), "--dtype", "float64",
               "--method", method, "--prompt", "def f(a):", "--max-new-tokens", "12", "--json"]  # fmt: skip
        assert main(gen) == 0
        out[method] = json.loads(capsys.readouterr().out.splitlines()[0])
    assert out["draft"]["token_ids"] == out["none"]["token_ids"]
    assert out["draft"]["stats"]["draft_tokens"] > 0
