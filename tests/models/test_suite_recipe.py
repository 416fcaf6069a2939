"""The default-suite recipe on cpu-tiny (seconds), and the bundled suite (skipped until it is bundled)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from specserve.cli.train import add_train_parser
from specserve.models.suite import corpus, tokenizer
from specserve.models.suite.configs import PRESETS, ModelShape, TrainConfig, get_preset
from specserve.models.suite.distill import continue_prompts
from specserve.models.suite.evaluate import read_val_sample
from specserve.models.suite.recipe import run_suite
from specserve.models.suite.train import TokenWindows, evaluate_loss, train_loop
from specserve.models.suite_paths import SUITE_DIR, default_suite

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS_FILES = [
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "textwrap.py",
    "string.py",
    "bisect.py",
    "heapq.py",
    "shlex.py",
    "colorsys.py",
    "keyword.py",
]

CODE_SAMPLES = [
    "def f(x):\n    return x  # trailing   \n",
    "class A:\n\tdef g(self):\n\t\tpass\n\n\n\n",
    "x = '\u00e9\u4e2d\U0001f600'\r\nif x:\r\n        y = [ 1,2 ,3 ]   \n",
    "  \n \t \n    ",
    'async def main() -> None:\n    """Doc."""\n    await asyncio.sleep(0)\n<|endoftext|>',
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specserve")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for name in CORPUS_FILES:
        (root / name.replace("/", "_")).write_bytes((STDLIB / name).read_bytes())
    (root / "dup.py").write_bytes((STDLIB / "bisect.py").read_bytes())  # deduplicated
    (root / "notes.txt").write_text("not python")
    return root


@pytest.fixture(scope="module")
def tiny_suite(tiny_corpus, tmp_path_factory) -> tuple[Path, Path]:
    """The whole recipe through the CLI: corpus -> tokenizer -> target -> draft -> distill -> eval -> card."""
    base = tmp_path_factory.mktemp("suite")
    out, work = base / "out", base / "work"
    args = _parser().parse_args(
        [
            "train",
            "suite",
            "--preset",
            "cpu-tiny",
            "--out",
            str(out),
            "--corpus-dir",
            str(tiny_corpus),
            "--work-dir",
            str(work),
        ]
    )
    assert args.func(args) == 0
    return out, work


def test_presets_and_unknown_preset() -> None:
    for p in PRESETS.values():
        t = p.target.llama_config(p.vocab_size, p.context, 0, 0, 1)
        d = p.draft.llama_config(p.vocab_size, p.context, 0, 0, 1)
        if p.name != "cpu-tiny":
            assert 8192 <= p.vocab_size <= 16384 and 512 <= p.context <= 1024
            n_t = LlamaForCausalLM(t).num_parameters()
            n_d = LlamaForCausalLM(d).num_parameters()
            assert n_t >= 6 * n_d, (p.name, n_t, n_d)
            assert 2 * n_t + 2 * n_d < 58e6, "bf16 weights must fit the 60 MB bundle"
        assert p.distill.train.seq_len == p.distill.prompt_len + p.distill.new_tokens
    with pytest.raises(ValueError, match="'gpu-huge'"):
        get_preset("gpu-huge")
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "suite", "--preset", "gpu-huge"])


def test_bad_inputs_fail_before_training(tmp_path, caplog) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.md").write_text("no python here")
    with pytest.raises(ValueError, match="no usable Python files.*empty"):
        run_suite("cpu-tiny", tmp_path / "out", corpus_dirs=[empty], work_dir=tmp_path / "work")
    assert not (tmp_path / "work" / "target").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable.*a_file"):
        run_suite("cpu-tiny", blocker / "out", corpus_dirs=[empty], work_dir=tmp_path / "work")
    with pytest.raises(ValueError, match="'nope'"):
        run_suite("nope", tmp_path / "out")
    args = _parser().parse_args(
        [
            "train",
            "suite",
            "--preset",
            "cpu-tiny",
            "--out",
            str(blocker / "o"),
            "--corpus-dir",
            str(empty),
            "--work-dir",
            str(tmp_path / "w"),
        ]
    )
    with pytest.raises(SystemExit, match="a_file"):
        args.func(args)


def test_corpus_dedup_split_and_manifest(tiny_suite) -> None:
    out, work = tiny_suite
    manifest = json.loads((work / "shards" / "manifest.json").read_text())
    splits = manifest["splits"]
    assert splits["train"]["files"] + splits["validation"]["files"] == len(CORPUS_FILES)
    assert manifest["skipped"]["duplicate"] == 1
    assert splits["validation"]["files"] >= 1 and splits["train"]["tokens"] > 0
    summary = json.loads((out / "suite.json").read_text())
    assert summary["corpus"]["digest"] == manifest["digest"]
    assert corpus.split_of("0" * 64, 20) == "validation" and corpus.split_of("f" * 64, 20) == "train"


def test_tiny_suite_loads_and_matches_card(tiny_suite) -> None:
    out, _ = tiny_suite
    for name in ("target", "draft"):
        folder = out / name
        for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / f).is_file(), f
        assert list(folder.glob("*.safetensors"))
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        assert tok.eos_token_id == tok.bos_token_id == model.config.eos_token_id
        assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
        assert model.get_output_embeddings().weight.shape[0] >= len(tok)
    summary = json.loads((out / "suite.json").read_text())
    assert summary["acceptance"]["kept"] in ("distilled", "corpus-trained")
    assert 0.0 <= summary["acceptance"]["before"]["acceptance_rate"] <= 1.0
    _check_val_sample(out, summary)
    card = (out / "README.md").read_text()
    assert "val loss" in card and "acceptance" in card


def test_rerun_resumes_from_work_dir(tiny_suite, tiny_corpus, caplog) -> None:
    out, work = tiny_suite
    with caplog.at_level(logging.INFO):
        run_suite("cpu-tiny", out, corpus_dirs=[tiny_corpus], work_dir=work)
    text = caplog.text
    assert "tokenizer: reusing" in text and "shards up to date" in text
    assert "target: resuming from step 4 of 4" in text and "draft: resuming from step 4 of 4" in text


def test_interrupted_training_resumes_to_the_same_weights(tmp_path) -> None:
    torch.manual_seed(0)
    tokens = torch.randint(0, 64, (5000,)).numpy().astype("uint16")
    windows = TokenWindows(tokens, 16)
    cfg = TrainConfig(
        steps=6, batch_size=2, seq_len=16, lr=1e-2, warmup_steps=2, eval_every=3, eval_windows=2, ckpt_every=2
    )
    shape = ModelShape(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)

    def run(
        ckpt: Path, stop_after: int | None = None, data_id: str = "tok-a"
    ) -> tuple[LlamaForCausalLM, object]:
        torch.manual_seed(1)
        model = LlamaForCausalLM(shape.llama_config(64, 32, 0, 0, 1))
        res = train_loop(
            "t",
            model,
            cfg,
            lambda s: windows.batch(7, s, 2),
            windows.evenly(2),
            ckpt,
            stop_after=stop_after,
            data_id=data_id,
        )
        return model, res

    whole, whole_res = run(tmp_path / "whole")
    _, part = run(tmp_path / "split", stop_after=4)
    assert part.steps == 4
    resumed, res = run(tmp_path / "split")
    assert res.resumed_from == 4 and res.steps == 6 and res.tokens_seen == whole_res.tokens_seen
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    _, other = run(tmp_path / "split", data_id="tok-b")  # other token ids: the checkpoint does not apply
    assert other.resumed_from == 0 and other.steps == 6


def test_tokenizer_round_trips_code(tiny_suite) -> None:
    out, _ = tiny_suite
    tok = AutoTokenizer.from_pretrained(str(out / "target"))
    src = (STDLIB / "textwrap.py").read_text()
    for text in [src, *CODE_SAMPLES]:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        assert tok.decode(ids) == text


def test_cached_continuation_matches_full_forward() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(ModelShape(32, 2, 2, 64).llama_config(50, 64, 0, 0, 1)).eval()
    prompts = torch.randint(0, 50, (3, 5))
    seqs = continue_prompts(model, prompts, 6, 0.0, torch.Generator())
    with torch.no_grad():
        full = model(input_ids=seqs).logits.argmax(-1)  # [B, T]
    assert torch.equal(seqs[:, 5:], full[:, 4:-1])


def _check_val_sample(suite_dir: Path, summary: dict) -> None:
    """The loss recorded in the card is reproduced on the shipped validation windows."""
    windows = read_val_sample(suite_dir / "val_sample.json")
    assert windows.shape[0] == summary["eval"]["sample_windows"]
    for name in ("target", "draft"):
        model = AutoModelForCausalLM.from_pretrained(str(suite_dir / name), dtype=torch.float32)
        loss = evaluate_loss(model, windows, batch_size=len(windows))
        assert loss == pytest.approx(summary["models"][name]["val_sample_loss"], abs=2e-3), name


def test_bundled_suite_loads_offline(tmp_path, monkeypatch) -> None:
    paths = default_suite()
    if paths is None:
        pytest.skip("the default suite is not bundled yet (models/default_suite/target/config.json)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # any working directory
    assert set(paths) >= {"target", "draft"}
    files = [p for p in SUITE_DIR.rglob("*") if p.is_file()]
    assert all(p.stat().st_size <= 16 * 2**20 for p in files), "every bundled file <= 16 MB"
    assert sum(p.stat().st_size for p in files) <= 60 * 2**20, "the bundle <= 60 MB"
    summary = json.loads((SUITE_DIR / "suite.json").read_text())
    toks = [AutoTokenizer.from_pretrained(paths[n]) for n in ("target", "draft")]
    assert toks[0].get_vocab() == toks[1].get_vocab()
    for text in CODE_SAMPLES + [(STDLIB / "textwrap.py").read_text()]:
        assert toks[0].decode(toks[0](text)["input_ids"]) == text
    _check_val_sample(SUITE_DIR, summary)
    assert (SUITE_DIR / "README.md").is_file()


def test_tokenizer_helpers_round_trip(tmp_path) -> None:
    texts = [(STDLIB / n).read_text() for n in CORPUS_FILES[:4]]
    tok = tokenizer.train_tokenizer(texts, 300)
    fast = tokenizer.save_tokenizer(tok, tmp_path / "tok", 128)
    again = tokenizer.load_tokenizer(tmp_path / "tok")
    assert again.get_vocab() == tok.get_vocab()
    assert tokenizer.tokenizer_digest(again) == tokenizer.tokenizer_digest(
        tokenizer.load_tokenizer(tmp_path / "tok")
    )
    for text in CODE_SAMPLES:
        assert fast.decode(fast(text)["input_ids"]) == text
    shutil.rmtree(tmp_path / "tok")
