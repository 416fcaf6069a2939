"""Continuous batching over HTTP: 32 concurrent greedy requests of different lengths, methods and
routes return exactly what each returns alone (float64) while the batch really forms; a full queue
answers 429; a client that goes away frees its slot for the next request in the queue.

The engine gate (see live_harness.EngineGate) holds the engine between steps, so "all 32 are queued
before the first step" and "the slot is taken while the others wait" are facts, not timing luck.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from live_harness import MODEL, WAIT_S, LiveServer, serving, sse_data, wait_until

N = 32
METHODS = [("none", None), ("draft", 3), ("ngram", 2), ("draft", 1), ("ngram", 5), ("draft", 6)]


def _workload(vocab: int) -> list[dict]:
    """32 requests: prompt lengths 3..58, max_tokens 4..40, every method and route."""
    rng = random.Random(7)
    out = []
    for i in range(N):
        method, k = METHODS[i % len(METHODS)]
        ids = [rng.randrange(2, vocab) for _ in range(3 + (i * 13) % 56)]
        out.append({"ids": ids, "max_tokens": 4 + (i * 11) % 37, "method": method, "k": k,
                    "route": "/v1/completions" if i % 5 == 4 else "/generate"})  # fmt: skip
    return out


def _send(client: httpx.Client, req: dict) -> dict:
    if req["route"] == "/generate":
        body = {"prompt_token_ids": req["ids"], "max_tokens": req["max_tokens"], "method": req["method"],
                "num_speculative_tokens": req["k"]}  # fmt: skip
    else:
        body = {"model": MODEL, "prompt": req["ids"], "max_tokens": req["max_tokens"], "temperature": 0,
                "speculation": {"method": req["method"], "num_speculative_tokens": req["k"]}}  # fmt: skip
    r = client.post(req["route"], json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _tokens_and_stats(req: dict, out: dict) -> tuple[list[int] | str, str, dict]:
    if req["route"] == "/generate":
        return out["token_ids"], out["finish_reason"], out["stats"]
    choice = out["choices"][0]
    return choice["text"], choice["finish_reason"], out["speculation"]


@pytest.fixture(scope="module")
def narrow(tiny_paths) -> Iterator[LiveServer]:
    """5 batch slots for 32 requests: rows join the running batch as others leave."""
    with serving(tiny_paths, max_batch_size=5) as server:
        yield server


@pytest.mark.parametrize("which", ["live", "narrow"])
def test_32_concurrent_requests_equal_each_alone(which, request, gate_factory, reference, tokenizer):
    server: LiveServer = request.getfixturevalue(which)
    reqs = _workload(tokenizer.vocab_size)
    gate = gate_factory(server)  # hold the engine until all 32 are queued
    with server.http(timeout=WAIT_S) as client, ThreadPoolExecutor(N) as pool:
        futures = [pool.submit(_send, client, r) for r in reqs]
        wait_until(
            lambda: server.state.service.num_waiting == N or any(f.done() for f in futures), "32 queued"
        )
        assert server.state.service.num_waiting == N
        gate.open()
        outs = [f.result(timeout=WAIT_S) for f in futures]

        batch_sizes = []
        for req, out in zip(reqs, outs, strict=True):
            got, finish, stats = _tokens_and_stats(req, out)
            want, want_finish = reference(req["ids"], req["max_tokens"])  # plain greedy, batch size 1
            if req["route"] != "/generate":
                want = tokenizer.decode(want, skip_special_tokens=True)
            assert (got, finish) == (want, want_finish), req
            assert stats["method"] == req["method"]
            batch_sizes.append(stats["mean_batch_size"])
        assert max(batch_sizes) > 1  # the batch really formed
        if which == "live":  # all 32 admitted at once: every request shared its forwards
            assert min(batch_sizes) > 1

        # the same requests sent alone: the same answers, at batch size 1
        for req, out in list(zip(reqs, outs, strict=True))[:4]:
            alone = _send(client, req)
            assert _tokens_and_stats(req, alone)[:2] == _tokens_and_stats(req, out)[:2]
            assert _tokens_and_stats(req, alone)[2]["mean_batch_size"] == 1.0


LONG = {"prompt_token_ids": [5, 6, 7], "max_tokens": 150, "ignore_eos": True}


@pytest.fixture
def small_client(small: LiveServer) -> Iterator[httpx.Client]:
    with small.http(timeout=WAIT_S) as c:
        yield c
    # whatever a test left behind drains once its gate opens
    wait_until(lambda: not small.state.engine.has_work(), "the small server to go idle")


def _first_frame(resp: httpx.Response) -> dict:
    frame = next(sse_data(resp.iter_lines()))
    assert isinstance(frame, dict)
    return frame


def _hold_one_running(small: LiveServer, gate, resp: httpx.Response) -> None:
    """Let exactly one step run (admit + prefill of the waiting request), then hold the engine."""
    gate.release(1)
    assert _first_frame(resp)["token_ids"]
    wait_until(lambda: small.state.service.num_running == 1 and gate.holding.is_set(), "one running row")


def test_queue_full_is_a_429_with_retry_after(small: LiveServer, small_client: httpx.Client, gate_factory):
    gate = gate_factory(small)
    c = small_client
    with c.stream("POST", "/generate", json=LONG | {"stream": True}) as running:
        assert running.status_code == 200
        _hold_one_running(small, gate, running)
        with c.stream("POST", "/generate", json=LONG | {"stream": True}) as waiting:
            assert waiting.status_code == 200 and small.state.service.num_waiting == 1
            for path, body in [
                ("/generate", LONG),
                ("/generate", LONG | {"stream": True}),  # a full queue is a plain 429, not a broken stream
                ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": True}),
                ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
            ]:
                r = c.post(path, json=body)
                assert r.status_code == 429, r.text
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"]["type"] == "rate_limit_error"
            with pytest.raises(openai.RateLimitError):
                small.openai().completions.create(model=MODEL, prompt="x", max_tokens=2)
            assert small.state.service.num_running == 1 and small.state.service.num_waiting == 1
    gate.open()
    wait_until(lambda: not small.state.engine.has_work(), "the aborted streams to drain")
    assert c.post("/generate", json={"prompt": "x", "max_tokens": 2}).status_code == 200  # room again


def test_disconnect_mid_stream_frees_the_slot_for_the_queue(
    small: LiveServer, small_client: httpx.Client, gate_factory, reference
):
    finished: list = []  # rows as the engine retires them (engine thread)
    small.state.service.finish_listeners.append(finished.append)
    try:
        gate = gate_factory(small)
        c = small_client
        with ThreadPoolExecutor(1) as pool:
            with c.stream("POST", "/generate", json=LONG | {"stream": True}) as running:
                _hold_one_running(small, gate, running)
                queued = pool.submit(
                    c.post, "/generate", json={"prompt_token_ids": [9, 8, 7], "max_tokens": 12}
                )
                wait_until(lambda: small.state.service.num_waiting == 1, "the second request to queue")
            # the client went away mid-stream; the server notices while the engine is still held
            wait_until(lambda: len(small.state.service.queues) == 1, "the server to drop the stream")
            gate.open()
            out = queued.result(timeout=WAIT_S)
        assert out.status_code == 200 and out.json()["token_ids"] == reference([9, 8, 7], 12)[0]
        wait_until(lambda: small.state.service.num_running == 0, "the slot to free")
        (gone,) = [r for r in finished if r.sampling.max_new_tokens == 150]
        assert gone.finish_reason == "abort" and gone.num_generated < 150
    finally:
        small.state.service.finish_listeners.remove(finished.append)


def test_non_streaming_client_that_gives_up_frees_its_slot(
    small: LiveServer, small_client: httpx.Client, gate_factory
):
    finished: list = []
    small.state.service.finish_listeners.append(finished.append)
    try:
        gate = gate_factory(small)
        gate.release(1)  # admit and prefill, then hold
        with pytest.raises(httpx.ReadTimeout):  # the client stops waiting and closes the connection
            small_client.post("/generate", json=LONG, timeout=httpx.Timeout(WAIT_S, read=1.0))
        wait_until(lambda: not small.state.service.queues, "the server to notice the client is gone")
        wait_until(lambda: small.state.service.num_running == 1 and gate.holding.is_set(), "a held row")
        gate.open()
        wait_until(lambda: small.state.service.num_running == 0 and finished, "the slot to free")
        assert finished[0].finish_reason == "abort" and finished[0].num_generated < 150
    finally:
        small.state.service.finish_listeners.remove(finished.append)


def test_n_choices_are_queued_all_or_none(small: LiveServer, small_client: httpx.Client):
    """Room for two rows (one slot, one waiting place): n=3 is a 429 and leaves nothing behind;
    n=2 runs both choices."""
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "temperature": 0.8, "seed": 1}
    r = small_client.post("/v1/completions", json=body | {"n": 3})
    assert r.status_code == 429, r.text
    wait_until(lambda: not small.state.engine.has_work() and not small.state.service.queues, "nothing left")
    r = small_client.post("/v1/completions", json=body | {"n": 2})
    assert r.status_code == 200 and [c["index"] for c in r.json()["choices"]] == [0, 1]
