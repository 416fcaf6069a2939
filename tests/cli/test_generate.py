"""`specserve generate`: flags, JSON lines in input order, clear errors before any work."""

from __future__ import annotations

import json

import pytest

from specserve.cli import options
from specserve.cli.main import main
from specserve.decoding import Engine, SamplingParams, SpecParams


def _run(capsys, *argv: str) -> list[dict]:
    assert main(list(argv)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("compile", ["off", "on"])
def test_generate_json_in_input_order(capsys, tiny_paths, tiny, tmp_path, compile):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add(a, b):", "id": "x"}\n\n{"prompt": "for i in range(3):"}\n')
    common = ["--target", tiny_paths["target"], "--draft", tiny_paths["draft"], "--dtype", "float64"]
    out = _run(capsys, "generate", *common, "--prompts", str(prompts), "--method", "draft", "-k", "3",
               "--max-new-tokens", "12", "--batch-size", "2", "--json", "--compile", compile)  # fmt: skip
    assert [o["id"] for o in out] == ["x", "1"]
    tok = tiny["target"].tokenizer
    engine = Engine(tiny["target"].model, eos_token_ids=tiny["target"].eos_token_ids)
    ref = engine.generate(
        [tok.encode("def add(a, b):"), tok.encode("for i in range(3):")],
        SamplingParams(max_new_tokens=12),
        SpecParams(),
    )
    assert [o["token_ids"] for o in out] == [r.token_ids for r in ref]
    assert out[0]["text"] == tok.decode(ref[0].token_ids, skip_special_tokens=True)
    assert out[0]["stats"]["method"] == "draft" and out[0]["finish_reason"] in ("stop", "length")
    stats = out[0]["stats"]  # charged as the server charges them
    assert stats["bytes_read"] > 0 and stats["mbu"] > 0 and stats["mfu"] > 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--method", "draft", "-k", "0"], "num_speculative_tokens must be in 1..16, got 0"),
        (["--max-new-tokens", "0"], "max_new_tokens must be >= 1, got 0"),
        (["--max-new-tokens", "500"], "exceeds the model context of 192"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ],
)
def test_bad_input_names_the_value(tiny_paths, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["generate", "--target", tiny_paths["target"], "--dtype", "float64", "--prompt", "x",
              "--compile", "off", *argv])  # fmt: skip


def test_draft_with_other_vocabulary(tiny_paths):
    with pytest.raises(SystemExit, match="different vocabulary"):
        main(["generate", "--target", tiny_paths["target"], "--draft", tiny_paths["other_vocab"],
              "--method", "draft", "--prompt", "x"])  # fmt: skip


def test_unknown_method_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--method", "beam", "--prompt", "x"])
    assert "invalid choice: 'beam'" in capsys.readouterr().err


def test_without_a_model_or_suite_it_says_so(monkeypatch):
    monkeypatch.setattr(options, "default_suite", lambda: None)
    with pytest.raises(SystemExit, match="no model: pass --target"):
        main(["generate", "--prompt", "x"])
