"""Warm-up: `on` compiles before the first request, `auto` keeps compiled steps only where they
measured faster, `off` compiles nothing, and a model that does not compile runs eagerly."""

from __future__ import annotations

import pytest

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.warmup import warm_up


def _engine(tiny, compile: bool = True) -> Engine:
    return Engine(tiny["target"].model, tiny["draft"].model, eos_token_ids=tiny["target"].eos_token_ids,
                  compile=compile)  # fmt: skip


def test_on_compiles_the_lone_request_graphs(tiny):
    engine = _engine(tiny)
    report = warm_up(engine, "on", ["draft"], k=3)
    assert report.compiled and report.graphs >= 3 and not report.tokens_per_s
    assert (True, True, False) in engine.compiled["target"].graphs  # plain steps, one row
    assert (True, False, False) in engine.compiled["target"].graphs  # verifying K + 1 tokens
    assert (True, True, False) in engine.compiled["draft"].graphs  # proposing


def test_auto_keeps_the_faster_side(tiny):
    engine = _engine(tiny)
    report = warm_up(engine, "auto", ["none"])
    assert set(report.tokens_per_s) == {"compiled", "eager"}
    faster = report.tokens_per_s["compiled"] > report.tokens_per_s["eager"]
    assert report.compiled == faster
    assert all(c.enabled == faster for c in engine.compiled.values())


def test_off_compiles_nothing(tiny):
    engine = _engine(tiny, compile=False)
    assert not engine.compiled
    assert not warm_up(engine, "off", ["draft"]).compiled
    with pytest.raises(ValueError, match="compile mode must be one of auto, on, off"):
        warm_up(engine, "maybe", ["draft"])


def test_a_model_that_does_not_compile_runs_eagerly(tiny, monkeypatch, caplog):
    engine = _engine(tiny)

    def broken(*args, **kwargs):
        raise RuntimeError("no graph for you")

    for c in engine.compiled.values():
        monkeypatch.setattr(c, "fn", broken)
    report = warm_up(engine, "auto", ["draft"], k=3)
    assert not report.compiled and "does not compile" in caplog.text
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    out = engine.generate(prompts, SamplingParams(max_new_tokens=10), SpecParams("draft", 3))
    plain = Engine(tiny["target"].model).generate(prompts, SamplingParams(max_new_tokens=10), SpecParams())
    assert [r.token_ids for r in out] == [r.token_ids for r in plain]
