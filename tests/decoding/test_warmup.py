"""Warm-up: `on` and `auto` compile the lone-request graphs before the first request (`auto` also
judges them against eager), `off` compiles nothing, and a model that does not compile runs eagerly."""

from __future__ import annotations

import pytest
import torch

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.compiled import TRIALS
from specserve.decoding.warmup import warm_up


def _engine(tiny, compile: str) -> Engine:
    return Engine(tiny["target"].model, tiny["draft"].model, eos_token_ids=tiny["target"].eos_token_ids,
                  compile=compile)  # fmt: skip


def test_on_compiles_the_lone_request_graphs(tiny):
    engine = _engine(tiny, "on")
    report = warm_up(engine, "on", ["draft"])
    assert report.compiled and report.graphs == 4 and not report.verdicts
    lone = {(True, True, False), (True, False, False)}  # one token a row, and several
    assert set(engine.compiled["target"].graphs) == lone  # plain steps, verification
    assert set(engine.compiled["draft"].graphs) == lone  # proposing, catching up


def test_on_compiles_the_eagle_heads_graphs_with_hidden_states(tiny):
    from tiny_models import random_eagle

    engine = Engine(tiny["target"].model, eagle=random_eagle(tiny["target"].model), compile="on")
    report = warm_up(engine, "on", ["eagle"])
    lone = {(True, True, True), (True, False, True)}  # the target's with hidden states, the head's
    assert report.compiled and set(engine.compiled["eagle"].graphs) == lone
    assert lone <= set(engine.compiled["target"].graphs)


def test_auto_judges_plain_steps_both_ways(tiny):
    engine = _engine(tiny, "auto")
    report = warm_up(engine, "auto", ["none"])
    n = torch.get_num_threads()
    assert set(report.verdicts) == {
        f"target 1-1 rows, 1 token a row, {n} threads",
        f"target 1-1 rows, tokens > 1 a row, {n} threads",
    }
    judged = engine.compiled["target"].judged[(1, True, False, n)].compiled
    assert report.verdicts[f"target 1-1 rows, 1 token a row, {n} threads"] == (
        "compiled" if judged else "eager"
    )


def test_off_compiles_nothing(tiny):
    engine = _engine(tiny, "off")
    assert not engine.compiled
    assert not warm_up(engine, "off", ["draft"]).compiled
    with pytest.raises(ValueError, match="compile mode must be one of auto, on, off"):
        warm_up(engine, "maybe", ["draft"])
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        _engine(tiny, "yes")


def test_auto_runs_each_kind_the_faster_way(tiny, monkeypatch):
    """Timed both ways on interleaved forwards; the verdict follows the measured times."""
    engine = _engine(tiny, "auto")
    c = engine.compiled["target"]
    c.compiled_now = False
    for _ in range(TRIALS):  # compiled forwards of 3 rows, 1 token, measured slower
        assert c.wants(3, 1, False)
        c.timed(3, 1, False, True, 0.010)
        assert not c.wants(3, 1, False)
        c.timed(3, 1, False, False, 0.005)
    assert c.judged[(2, True, False, torch.get_num_threads())].compiled is False
    assert not c.wants(2, 1, False)  # 2-3 rows: the same kind, eager now
    assert c.wants(1, 1, False)  # another kind is judged apart
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # (the thread tuner tries counts on the same steps)
    try:
        assert c.wants(3, 1, False)  # so is each thread count: timed afresh, compiled first
    finally:
        torch.set_num_threads(threads)


def test_a_model_that_does_not_compile_runs_eagerly(tiny, monkeypatch, caplog):
    engine = _engine(tiny, "on")

    def broken(*args, **kwargs):
        raise RuntimeError("no graph for you")

    for c in engine.compiled.values():
        monkeypatch.setattr(c, "fn", broken)
    report = warm_up(engine, "on", ["draft"])
    assert not report.compiled and "does not compile" in caplog.text
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    out = engine.generate(prompts, SamplingParams(max_new_tokens=10), SpecParams("draft", 3))
    plain = Engine(tiny["target"].model).generate(prompts, SamplingParams(max_new_tokens=10), SpecParams())
    assert [r.token_ids for r in out] == [r.token_ids for r in plain]


def test_engine_steps_on_another_thread_reuse_the_warm_up_graphs(tiny):
    """Grad mode and the thread count are per thread: steps on the engine thread, at either
    thread count warmed, compile nothing more (dynamo's guard on both is filtered out:
    decoding/compiled.py)."""
    import threading

    import torch

    engine = Engine(tiny["target"].model, eos_token_ids=tiny["target"].eos_token_ids, compile="on")
    warm_up(engine, "on", ["none"], threads=(1, 2))
    compiled = engine.compiled["target"]
    warmed, calls, before = compiled.compiles, compiled.calls, torch.get_num_threads()

    def serve() -> None:  # as the engine thread does: default grad mode, the tuner's threads
        for n in (1, 2):
            torch.set_num_threads(n)
            engine.generate([[5, 6, 7]], SamplingParams(max_new_tokens=6, ignore_eos=True), SpecParams())

    worker = threading.Thread(target=serve)
    worker.start()
    worker.join(300)
    torch.set_num_threads(before)
    assert compiled.calls > calls and compiled.compiles == warmed


def test_idle_tasks_compile_a_batchs_graphs_and_time_every_bucket(tiny):
    """What start-up leaves for idle time: the default method's graphs of several rows under each
    thread count and its step costs above batch size 1, then the other methods' (lone-request
    forwards first). Run, a batch of several rows compiles nothing more."""
    from specserve.decoding.warmup import idle_tasks

    engine = Engine(tiny["target"].model, tiny["draft"].model, eos_token_ids=tiny["target"].eos_token_ids,
                    max_batch_size=4, compile="on")  # fmt: skip
    warm_up(engine, "on", ["draft"], threads=(1,))
    tasks = idle_tasks(engine, "on", "draft", (1, 2))  # (start-up warms a lone request's: both counts)
    assert [what for what, _ in tasks] == [  # (one model's graphs a task; none twice)
        "the target's forwards, 2 rows, 1 threads", "the draft's forwards, 2 rows, 1 threads",
        "the target's forwards, 2 rows, 2 threads", "the draft's forwards, 2 rows, 2 threads",
        "draft's step costs at 2 rows", "draft's step costs at 4 rows",
        "ngram's step costs at 1 rows", "ngram's step costs at 2 rows", "ngram's step costs at 4 rows",
    ]  # fmt: skip
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for _, work in idle_tasks(engine, "on", "draft", (1,)):  # (one count: compiling is slow)
            work()
    finally:
        torch.set_num_threads(before)
    batch = {(False, True, False), (False, False, False)}  # several rows: one token a row, and more
    assert batch <= set(engine.compiled["target"].graphs) and batch <= set(engine.compiled["draft"].graphs)
    assert set(engine.policy.costs) == {(m, b) for m in ("draft", "ngram") for b in (2, 4)} | {("ngram", 1)}
    compiles = {role: c.compiles for role, c in engine.compiled.items()}
    torch.set_num_threads(1)
    try:
        engine.generate(
            [[5, 6, 7], [8, 9]], SamplingParams(max_new_tokens=8, ignore_eos=True), SpecParams("draft", 3)
        )
    finally:
        torch.set_num_threads(before)
    assert {role: c.compiles for role, c in engine.compiled.items()} == compiles
    off = Engine(tiny["target"].model, tiny["draft"].model, max_batch_size=2)
    assert [what for what, _ in idle_tasks(off, "off", "none", (1,))] == [
        "draft's step costs at 1 rows", "draft's step costs at 2 rows",
        "ngram's step costs at 1 rows", "ngram's step costs at 2 rows",
    ]  # fmt: skip
