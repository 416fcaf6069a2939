"""Engine contract: validation before work, seeded reproducibility, aborts free slots, stats."""

from __future__ import annotations

import pytest

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.models.loading import check_draft_compatible, load_model


@pytest.fixture()
def engine(tiny):
    return Engine(tiny["target"].model, tiny["draft"].model, eos_token_ids=(0,), max_batch_size=4)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: SpecParams("beam"), "unknown method 'beam'"),
        (lambda: SpecParams("draft", 0), "num_speculative_tokens must be in 1..16, got 0"),
        (lambda: SpecParams("ngram", 64), "got 64"),
        (lambda: SamplingParams(max_new_tokens=0), "max_new_tokens must be >= 1, got 0"),
        (lambda: SamplingParams(top_p=0.0), "top_p"),
        (lambda: SamplingParams(temperature=-1), "temperature"),
    ],
)
def test_bad_parameters_name_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_prompt_beyond_context_is_refused_before_work(engine):
    with pytest.raises(ValueError, match=r"prompt \(190 tokens\) \+ max_new_tokens \(10\) exceeds .* 192"):
        engine.make_row([3] * 190, SamplingParams(max_new_tokens=10), SpecParams("draft", 2))
    assert not engine.has_work()


def test_unloaded_method_and_empty_prompt(tiny):
    plain = Engine(tiny["target"].model)
    with pytest.raises(ValueError, match="method 'draft' is not available"):
        plain.make_row([1, 2], SamplingParams(), SpecParams("draft", 2))
    with pytest.raises(ValueError, match="empty"):
        plain.make_row([], SamplingParams(), SpecParams())
    with pytest.raises(ValueError, match="max_batch_size"):
        Engine(tiny["target"].model, max_batch_size=0)


def test_draft_with_other_vocabulary_is_refused(tiny, tiny_paths):
    other = load_model(tiny_paths["other_vocab"], dtype="float64")
    with pytest.raises(ValueError, match="different vocabulary"):
        check_draft_compatible(tiny["target"], other)
    check_draft_compatible(tiny["target"], tiny["draft"])  # same tokenizer: fine


@pytest.mark.parametrize("method", ["none", "draft", "ngram"])
def test_seeded_sampling_is_reproducible_and_batch_independent(engine, tiny, method):
    prompts = [[5, 6, 7, 5, 6], [9, 10, 11, 12]]
    sampling = [SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=s) for s in (1, 2)]
    a = engine.generate(prompts, sampling, SpecParams(method, 3))
    b = engine.generate(prompts, sampling, SpecParams(method, 3))
    alone = Engine(tiny["target"].model, tiny["draft"].model, eos_token_ids=(0,), max_batch_size=1)
    c = alone.generate(prompts, sampling, SpecParams(method, 3))
    assert [r.token_ids for r in a] == [r.token_ids for r in b] == [r.token_ids for r in c]
    other = engine.generate(prompts, [SamplingParams(max_new_tokens=20, temperature=1.0, seed=99)] * 2,
                            SpecParams(method, 3))  # fmt: skip
    assert [r.token_ids for r in other] != [r.token_ids for r in a]


def test_abort_frees_the_slot_for_waiting_requests(tiny):
    engine = Engine(tiny["target"].model, max_batch_size=1)
    long = engine.make_row([4, 5, 6], SamplingParams(max_new_tokens=100), SpecParams())
    short = engine.make_row([7, 8], SamplingParams(max_new_tokens=3), SpecParams())
    engine.add(long)
    engine.add(short)
    engine.step()
    assert engine.num_running == 1 and len(engine.waiting) == 1
    engine.abort(long.request_id)
    finished = engine.step()
    assert long in finished and long.finish_reason == "abort"
    assert engine.num_running == 1 and engine.batches["none"].rows == [short]
    while engine.has_work():
        engine.step()
    assert short.finish_reason == "length" and short.num_generated == 3


def test_request_stats(engine):
    res = engine.generate([[5, 6, 7, 8]] * 3, SamplingParams(max_new_tokens=10), SpecParams("draft", 3))
    s = res[0].stats
    d = s.to_dict()
    for key in ("method", "prompt_tokens", "completion_tokens", "queue_time_s", "ttft_s", "e2e_s",
                "target_forwards", "draft_tokens", "accepted_tokens", "acceptance_rate",
                "mean_accepted_length", "mean_batch_size"):  # fmt: skip
        assert key in d
    assert s.prompt_tokens == 4 and s.completion_tokens == len(res[0].token_ids)
    assert 0 < s.ttft_s <= s.e2e_s
    assert s.mean_batch_size == 3.0
    assert s.mean_accepted_length == pytest.approx(s.completion_tokens / s.target_forwards)
    assert s.acceptance_rate == pytest.approx(s.accepted_tokens / s.draft_tokens)


def test_deadline_expires_waiting_and_running_rows(tiny):
    engine = Engine(tiny["target"].model, max_batch_size=1)
    running = engine.make_row([4, 5, 6], SamplingParams(max_new_tokens=100), SpecParams())
    waiting = engine.make_row([7, 8], SamplingParams(max_new_tokens=3), SpecParams())
    engine.add(running)
    engine.add(waiting)
    engine.step()
    running.deadline = waiting.deadline = 0.0  # long past
    finished = engine.step()
    assert {r.finish_reason for r in finished} == {"timeout"} and len(finished) == 2
    assert not engine.has_work()


def test_a_failing_step_fails_only_its_rows(tiny, monkeypatch):
    """A draft that raises fails the draft rows; plain rows in the same engine finish normally."""
    engine = Engine(tiny["target"].model, tiny["draft"].model, max_batch_size=4)
    rows = [
        engine.make_row([4, 5, 6], SamplingParams(max_new_tokens=8), SpecParams(m, 2))
        for m in ("none", "draft", "none")
    ]
    for r in rows:
        engine.add(r)
    engine.step()  # prefill everything; the draft model breaks afterwards
    monkeypatch.setattr(
        tiny["draft"].model, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    while engine.has_work():
        engine.step()
    assert [r.finish_reason for r in rows] == ["length", "error", "length"]
    monkeypatch.undo()
    again = engine.generate([[4, 5, 6]], SamplingParams(max_new_tokens=5), SpecParams("draft", 2))
    assert again[0].finish_reason == "length"  # the method serves again afterwards


def test_a_failing_prefill_fails_only_the_joining_rows(tiny, monkeypatch):
    import specserve.decoding.engine as engine_module

    engine = Engine(tiny["target"].model, max_batch_size=4)
    first = engine.make_row([4, 5, 6], SamplingParams(max_new_tokens=6), SpecParams())
    engine.add(first)
    engine.step()
    real = engine_module.prefill
    monkeypatch.setattr(engine_module, "prefill", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bad")))
    bad = engine.make_row([7, 8], SamplingParams(max_new_tokens=6), SpecParams())
    engine.add(bad)
    engine.step()
    monkeypatch.setattr(engine_module, "prefill", real)
    while engine.has_work():
        engine.step()
    assert (first.finish_reason, bad.finish_reason) == ("length", "error")
    assert first.num_generated == 6
