"""EAGLE heads: files, refusal for another target, a reduced draft vocabulary, the training unroll
against real drafting, and `train eagle` / `train eagle-vocab` end to end on a tiny target (library
and CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import attentionless_model, copying_eagle, eagle_at, random_eagle, small_model

from specserve.cli.main import main
from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.models.draft_vocab import frequent_tokens
from specserve.models.eagle import EagleHead
from specserve.models.eagle_train import (
    EagleTrainConfig,
    add_draft_vocab,
    chain_acceptance,
    greedy_continuations,
    train_eagle,
    unrolled,
)
from specserve.models.loading import load_model, load_models
from specserve.models.suite.train import TokenWindows


def test_save_load_round_trip_and_refusal_for_another_target(tmp_path):
    target = small_model()
    head = random_eagle(target)
    head.save(tmp_path / "h")
    assert not any("embed_tokens" in k or "lm_head" in k for k in json.dumps(head.config.__dict__))
    loaded = EagleHead.load(tmp_path / "h", target)
    x = torch.tensor([[1, 2, 3]])
    f = torch.randn(1, 3, 32, dtype=torch.float64)
    assert torch.equal(loaded(x, f)[1], head(x, f)[1])
    assert loaded.decoder.lm_head is target.lm_head  # the target's own projection, not a copy
    with pytest.raises(ValueError, match="trained for another target"):
        EagleHead.load(tmp_path / "h", small_model(seed=9))  # same shapes, other weights
    with pytest.raises(ValueError, match="no EAGLE head"):
        EagleHead.load(tmp_path / "nothing", target)


def test_a_head_at_another_precision_projects_with_its_own_copies(tmp_path):
    """--eagle-dtype: the head's modules and its copies of the target's embedding and lm_head are
    at the head's precision; the target's stay as they were, and the copies are never stored."""
    target = small_model()
    before = target.lm_head.weight.clone()
    head = eagle_at(random_eagle(target), target, torch.bfloat16, tmp_path / "h")
    assert {p.dtype for p in head.parameters()} == {torch.bfloat16}
    assert head.decoder.lm_head is not target.lm_head
    assert torch.equal(head.decoder.lm_head.weight, before.to(torch.bfloat16))
    assert target.lm_head.weight.dtype == torch.float64 and torch.equal(target.lm_head.weight, before)
    assert target.get_input_embeddings().weight.dtype == torch.float64
    assert set(head.own_state()) == set(random_eagle(target).own_state())
    with pytest.raises(ValueError, match="eagle_dtype"):
        load_models(str(tmp_path / "no-target"), eagle=str(tmp_path / "h"), eagle_dtype="fp8")


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_reduced_draft_vocabulary_keeps_its_rows_and_round_trips(tmp_path, dtype):
    """restrict: the lm_head keeps the chosen tokens' rows (a copy, the target's untouched), logits
    index into the sorted ids; saved with the head and restored on load, at any precision."""
    target = small_model()
    head = random_eagle(target)
    ids = torch.tensor([9, 0, 4, 7, 2])
    x, f = torch.tensor([[1, 2, 3]]), torch.randn(1, 3, 32, dtype=torch.float64)
    full = head(x, f)[1]  # [1, 3, V]
    head.restrict(ids)
    assert head.vocab.tolist() == [0, 2, 4, 7, 9] and head.decoder.lm_head is not target.lm_head
    assert torch.allclose(head(x, f)[1], full[..., head.vocab])  # the same logits, of those tokens only
    assert head.token_ids(torch.tensor([0, 4])).tolist() == [0, 9]
    assert target.lm_head.weight.shape[0] == 12
    head.save(tmp_path / "h")
    loaded = EagleHead.load(tmp_path / "h", target, dtype)
    assert loaded.vocab.tolist() == [0, 2, 4, 7, 9]
    assert loaded.decoder.lm_head.weight.dtype == (dtype or torch.float64)
    assert torch.equal(
        loaded.decoder.lm_head.weight, target.lm_head.weight[loaded.vocab].to(dtype or torch.float64)
    )
    for bad in ([], [1, 1], [3, 12], [-1]):
        with pytest.raises(ValueError, match="distinct token ids in 0..11"):
            random_eagle(target).restrict(torch.tensor(bad, dtype=torch.long))


def test_unrolled_training_pass_is_what_drafting_computes():
    """Pass j at entry i == the head's cached forward after true entries 0..i-j+1 and guessed
    features for the rest (as `decoding/eagle.py` drafts)."""
    target = small_model()
    head = random_eagle(target)
    ids = torch.randint(0, 12, (2, 16))
    h = target.base_model(input_ids=ids).last_hidden_state  # [2, 16, H]
    outs = unrolled(head, ids[:, 1:], h[:, :-1], 3)
    s = 6  # a chain started at entry s
    y = head.decoder.model(inputs_embeds=head.embed(ids[:, 1 : s + 2], h[:, : s + 1]), use_cache=True)
    cache, f = y.past_key_values, y.last_hidden_state[:, -1:]
    assert torch.allclose(outs[0][0][:, s], f[:, 0])
    for j in (2, 3):
        i = s + j - 1
        y = head.decoder.model(
            inputs_embeds=head.embed(ids[:, i + 1 : i + 2], f),
            position_ids=torch.full((2, 1), i),
            cache=cache,
        )
        cache, f = y.past_key_values, y.last_hidden_state
        assert torch.allclose(outs[j - 1][0][:, i], f[:, 0])


def test_chain_acceptance_of_a_copying_head_is_one():
    target = attentionless_model()
    seqs = greedy_continuations(target, torch.randint(0, 12, (3, 8)), 32)  # what greedy decoding verifies
    acc = chain_acceptance(copying_eagle(target), target, seqs, prompt_len=8, depth=4)
    assert acc["accepted_at_least"] == [1.0] * 4 and acc["tokens_per_forward"] == 5.0
    acc = chain_acceptance(random_eagle(target), target, seqs, prompt_len=8, depth=4)
    assert acc["tokens_per_forward"] < 5.0


def test_train_eagle_tiny_end_to_end_and_resume(tiny_paths, tmp_path):
    tokens = np.random.default_rng(0).integers(2, 90, 6000).astype(np.uint16)
    windows = (TokenWindows(tokens, 32), TokenWindows(tokens[:800], 32))
    cfg = EagleTrainConfig(
        steps=6, batch_size=2, seq_len=32, warmup_steps=2, eval_prompts=2, eval_prompt_len=8,
        eval_new_tokens=12, eval_depth=3, checkpoint_every=3,
    )  # fmt: skip
    out, work = tmp_path / "head", tmp_path / "work"
    report = train_eagle(tiny_paths["target"], out, cfg, work, windows=windows, device="cpu")
    assert report["steps"] == 6 and [h["step"] for h in report["history"]] == [3, 6]
    assert len(report["history"][-1]["losses"]) == cfg.unroll
    a = report["acceptance"]
    assert len(a["acceptance_per_position"]) == 3 and 1.0 <= a["tokens_per_forward"] <= 4.0
    assert json.loads((out / "training.json").read_text())["tokens_seen"] == 6 * 2 * 32
    assert "tokens per target forward" in (out / "README.md").read_text()
    # a longer run resumes from the checkpoint at step 6
    longer = EagleTrainConfig(**{**cfg.__dict__, "steps": 9})
    assert train_eagle(tiny_paths["target"], out, longer, work, windows=windows, device="cpu")["steps"] == 9
    target = load_model(tiny_paths["target"], dtype="float64")
    head = EagleHead.load(out, target.model)
    prompt = target.tokenizer.encode("def add(a, b):")
    got = Engine(target.model, eagle=head).generate(
        [prompt], SamplingParams(max_new_tokens=16), SpecParams("eagle")
    )
    want = Engine(target.model).generate([prompt], SamplingParams(max_new_tokens=16), SpecParams())
    assert got[0].token_ids == want[0].token_ids
    # a draft vocabulary: at the end of training, or added to a trained head
    small = EagleTrainConfig(**{**cfg.__dict__, "draft_vocab": 20})
    report = train_eagle(
        tiny_paths["target"], tmp_path / "v", small, tmp_path / "w2", windows=windows, device="cpu"
    )
    assert (
        report["draft_vocab"]["size"] == 20 and 0 < report["draft_vocab"]["coverage_of_training_tokens"] < 1
    )
    V = target.model.get_output_embeddings().weight.shape[0]
    assert (
        EagleHead.load(tmp_path / "v", target.model).vocab.tolist()
        == frequent_tokens(tokens, V, 20)[0].tolist()
    )
    assert "Drafts over the 20 tokens" in (tmp_path / "v" / "README.md").read_text()
    v = add_draft_vocab(out, tiny_paths["target"], 40, windows=windows, device="cpu")
    assert v["size"] == 40 and set(v) >= {"acceptance_full", "acceptance"}
    assert json.loads((out / "training.json").read_text())["draft_vocab"] == v
    head = EagleHead.load(out, target.model)
    assert len(head.vocab) == 40
    got = Engine(target.model, eagle=head).generate(
        [prompt], SamplingParams(max_new_tokens=16), SpecParams("eagle")
    )
    assert got[0].token_ids == want[0].token_ids
    with pytest.raises(ValueError, match="already drafts over 40 tokens"):
        add_draft_vocab(out, tiny_paths["target"], 30, windows=windows, device="cpu")


def test_cli_trains_then_generates_with_eagle(tiny_paths, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):  # distinct files (the corpus deduplicates by content)
        (src / f"m{i}.py").write_text(f"# module {i}\n" + "def add(a, b):\n    return a + b\n" * 20)
    out = tmp_path / "head"
    argv = ["train", "eagle", "--target", tiny_paths["target"], "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--seq-len", "32", "--eval-prompts", "2", "--corpus-dir", str(src),
            "--work-dir", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 0
    assert (out / "eagle_head.safetensors").is_file()
    capsys.readouterr()
    argv = ["generate", "--target", tiny_paths["target"], "--eagle", str(out), "--dtype", "float64",
            "--method", "eagle", "--prompt", "def f(x):", "--max-new-tokens", "8", "--json"]  # fmt: skip
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[0])
    assert got["stats"]["method"] == "eagle" and len(got["token_ids"]) == 8
    argv = ["train", "eagle-vocab", "--eagle", str(out), "--size", "16", "--target", tiny_paths["target"],
            "--corpus-dir", str(src), "--work-dir", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "training.json").read_text())["draft_vocab"]["size"] == 16
    with pytest.raises(SystemExit, match="--size must be >= 1"):
        main([*argv[:5], "0", *argv[6:]])


@pytest.mark.parametrize(
    "extra,message",
    [(["--steps", "0"], "--steps must be >= 1, got 0"), (["--unroll", "0"], "--unroll must be >= 1")],
)
def test_train_eagle_cli_refuses_bad_input(tiny_paths, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        main(["train", "eagle", "--target", tiny_paths["target"], "--out", str(tmp_path), *extra])


def test_eagle_without_a_head_is_a_clear_error(tiny_paths):
    with pytest.raises(SystemExit, match="--method eagle needs an EAGLE head"):
        main(["generate", "--target", tiny_paths["target"], "--method", "eagle", "--prompt", "x"])
