"""An exception inside the engine fails only the requests it touched, as an error response (a 500:
the server failed, not the client), and the server keeps serving everything else."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from live_harness import MODEL, WAIT_S, LiveServer, sse_data, wait_until

PROMPT_IDS = [11, 12, 13, 14]


class Boom(RuntimeError):
    pass


@pytest.fixture
def break_draft(live: LiveServer, monkeypatch) -> Iterator[Callable[[int], None]]:
    """Make the draft model's forward raise after `ok_calls` good calls; undone after the test."""
    model = live.state.draft.model  # type: ignore[union-attr]
    real = model.forward
    calls = {"n": 0}

    def install(ok_calls: int = 0) -> None:
        def forward(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > ok_calls:
                raise Boom("injected draft failure")
            return real(*args, **kwargs)

        monkeypatch.setattr(model, "forward", forward)

    yield install


def _generate(client: httpx.Client, method: str, n: int = 10) -> httpx.Response:
    """A request of `method`, at a fixed K where it speculates (auto may choose plain steps, and a
    broken draft is only found when something drafts)."""
    body = {"prompt_token_ids": PROMPT_IDS, "max_tokens": n, "method": method}
    return client.post("/generate", json=body | ({"num_speculative_tokens": 2} if method != "none" else {}))


def test_failing_draft_prefill_fails_only_draft_requests(
    live: LiveServer, client: httpx.Client, break_draft, reference
):
    break_draft(0)
    r = _generate(client, "draft")
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and "decoding failed" in err["message"]
    with pytest.raises(openai.InternalServerError):
        live.openai().completions.create(
            model=MODEL,
            prompt=PROMPT_IDS,
            max_tokens=4,
            extra_body={"speculation": {"method": "draft", "num_speculative_tokens": 2}},
        )
    with client.stream("POST", "/generate", json={"prompt_token_ids": PROMPT_IDS, "max_tokens": 10,
                                                  "method": "draft", "num_speculative_tokens": 2,
                                                  "stream": True}) as resp:  # fmt: skip
        assert resp.status_code == 200  # the stream had begun: the failure arrives as an error event
        *events, done = list(sse_data(resp.iter_lines()))
    assert done == "[DONE]" and events[-1]["error"]["type"] == "server_error"
    with pytest.raises(openai.APIError, match="generation ended early"):
        list(live.openai().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
            extra_body={"speculation": {"method": "draft", "num_speculative_tokens": 2}}))  # fmt: skip
    for method in ("none", "ngram"):  # the other methods never noticed
        r = _generate(client, method)
        assert r.status_code == 200 and r.json()["token_ids"] == reference(PROMPT_IDS, 10)[0]
    assert client.get("/health").status_code == 200


def test_failing_decode_step_spares_the_rest_of_the_batch(
    live: LiveServer, client: httpx.Client, break_draft, gate_factory, reference
):
    break_draft(1)  # the draft's prefill works, its first decode step raises
    gate = gate_factory(live)  # both requests join in the same engine step
    with ThreadPoolExecutor(2) as pool:
        draft = pool.submit(_generate, client, "draft", 30)
        plain = pool.submit(_generate, client, "none", 30)
        wait_until(lambda: live.state.service.num_waiting == 2, "both requests to queue")
        gate.open()
        draft_r, plain_r = draft.result(timeout=WAIT_S), plain.result(timeout=WAIT_S)
    assert draft_r.status_code == 500 and draft_r.json()["error"]["type"] == "server_error"
    assert plain_r.status_code == 200 and plain_r.json()["token_ids"] == reference(PROMPT_IDS, 30)[0]


def test_draft_works_again_once_the_fault_is_gone(client: httpx.Client, reference):
    """Runs after the faults above were undone: the draft sub-batch was rebuilt from scratch."""
    r = _generate(client, "draft", 20)
    assert r.status_code == 200 and r.json()["token_ids"] == reference(PROMPT_IDS, 20)[0]
    assert r.json()["stats"]["draft_tokens"] > 0


def _fail_in(where: str, live: LiveServer, monkeypatch) -> None:
    """Make one engine stage raise on every call (undone by monkeypatch after the test)."""
    from specserve.decoding.batch import SubBatch

    def boom(*args, **kwargs):
        raise Boom(f"injected failure in {where}")

    engine = live.state.engine
    if where == "set-up":  # a sub-batch for joining rows (the cache, the proposer)
        monkeypatch.setattr(engine, "new_batch", boom)
    elif where == "merge":  # joining rows into the running sub-batch
        monkeypatch.setattr(SubBatch, "merge", boom)
    elif where == "retire":  # outside every contained stage: the service fails everything held
        monkeypatch.setattr(SubBatch, "retire", boom)
    elif where == "step-listener":  # metrics on a step's stats
        monkeypatch.setattr(live.state.service, "step_listeners", [boom])


@pytest.mark.parametrize("where", ["set-up", "merge", "retire", "step-listener"])
def test_every_request_held_is_answered_whatever_stage_fails(
    where: str, live: LiveServer, client: httpx.Client, gate_factory, monkeypatch, reference
):
    gate = gate_factory(live)  # all three join in one step
    _fail_in(where, live, monkeypatch)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_generate, client, m, 12) for m in ("none", "draft", "ngram")]
        wait_until(lambda: live.state.service.num_waiting == 3, "three requests to queue")
        gate.open()
        answers = [f.result(timeout=WAIT_S) for f in futures]  # none is left waiting
    for r in answers:
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
    wait_until(lambda: not live.state.engine.has_work() and not live.state.service.queues, "nothing held")
    monkeypatch.undo()
    r = _generate(client, "draft", 12)  # the server serves again once the fault is gone
    assert r.status_code == 200 and r.json()["token_ids"] == reference(PROMPT_IDS, 12)[0]


def test_a_failing_finish_listener_costs_no_answer(
    live: LiveServer, client: httpx.Client, monkeypatch, reference
):
    def boom(row):
        raise Boom("injected failure in a finish listener")

    monkeypatch.setattr(live.state.service, "finish_listeners", [boom])
    for _ in range(2):  # the engine thread survives it
        r = _generate(client, "none", 6)
        assert r.status_code == 200 and r.json()["token_ids"] == reference(PROMPT_IDS, 6)[0]
