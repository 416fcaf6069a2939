"""Native /generate (whole and streamed, ending with a stats event), OpenAI SSE framing over raw
HTTP, `stream_options.include_usage`, and the streamed output equal to the whole one."""

from __future__ import annotations

import httpx
import pytest
from live_harness import MODEL, sse_data

STATS_KEYS = {
    "method", "prompt_tokens", "completion_tokens", "queue_time_s", "ttft_s", "e2e_s", "target_forwards",
    "draft_tokens", "accepted_tokens", "acceptance_rate", "mean_accepted_length", "mean_batch_size",
}  # fmt: skip
PROMPT = "class Point:"


def _stream(client: httpx.Client, path: str, body: dict) -> tuple[httpx.Response, list]:
    with client.stream("POST", path, json=body | {"stream": True}) as resp:
        assert resp.status_code == 200
        events = list(sse_data(resp.iter_lines()))
    return resp, events


@pytest.mark.parametrize("method", ["none", "draft", "ngram"])
def test_generate_returns_text_ids_reason_and_stats(client: httpx.Client, tokenizer, reference, method):
    ids = tokenizer.encode(PROMPT)
    want, finish = reference(ids, 30)
    r = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 30, "method": method})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["token_ids"] == want and out["finish_reason"] == finish
    assert out["text"] == tokenizer.decode(want, skip_special_tokens=True)
    s = out["stats"]
    assert set(s) >= STATS_KEYS
    assert (s["method"], s["prompt_tokens"], s["completion_tokens"]) == (method, len(ids), len(want))
    assert 0 <= s["queue_time_s"] <= s["ttft_s"] <= s["e2e_s"]
    assert 1 <= s["target_forwards"] <= len(want) and s["mean_batch_size"] >= 1
    assert 0 <= s["acceptance_rate"] <= 1 and s["accepted_tokens"] <= s["draft_tokens"]
    # token ids in, same answer out
    r = client.post("/generate", json={"prompt_token_ids": ids, "max_tokens": 30, "method": method})
    assert r.json()["token_ids"] == want


def test_generate_default_is_greedy_with_the_server_default_method(
    client: httpx.Client, tokenizer, reference
):
    out = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 8}).json()
    assert out["token_ids"] == reference(tokenizer.encode(PROMPT), 8)[0]
    assert out["stats"]["method"] == "draft"


def test_generate_stream_ends_with_a_stats_event(client: httpx.Client, tokenizer):
    body = {
        "prompt": PROMPT,
        "max_tokens": 40,
        "ignore_eos": True,
        "method": "draft",
        "num_speculative_tokens": 3,
    }
    whole = client.post("/generate", json=body).json()
    resp, events = _stream(client, "/generate", body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    *frames, done = events
    assert done == "[DONE]" and len(frames) > 1
    *middle, last = frames
    assert all("finish_reason" not in e and "stats" not in e for e in middle)
    assert last["finish_reason"] == "length" and set(last["stats"]) >= STATS_KEYS
    assert last["stats"]["completion_tokens"] == 40 and last["stats"]["method"] == "draft"
    assert sum((e["token_ids"] for e in frames), []) == whole["token_ids"]
    assert "".join(e["text"] for e in frames) == whole["text"]
    # held back: a delta never ends inside a UTF-8 character (this model's output is mostly bytes)
    assert not any(e["text"].endswith("\ufffd") for e in middle)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_openai_sse_framing_and_include_usage(client: httpx.Client, path: str):
    chat = path.endswith("chat/completions")
    body = {"model": MODEL, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    body |= {"messages": [{"role": "user", "content": PROMPT}]} if chat else {"prompt": PROMPT}
    whole = client.post(path, json=body).json()
    resp, events = _stream(client, path, body | {"stream_options": {"include_usage": True}})
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["cache-control"] == "no-cache"
    *chunks, usage, done = events
    assert done == "[DONE]"
    cached = usage["usage"].pop("prompt_tokens_details")["cached_tokens"]
    whole["usage"].pop("prompt_tokens_details")  # (the first run of this prompt may or may not hit)
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert cached == usage["usage"]["prompt_tokens"] - 1  # the same prompt ran just before: cached
    assert usage["usage"]["completion_tokens"] == 12
    kind = "chat.completion.chunk" if chat else "text_completion"
    assert {c["object"] for c in events[:-1]} == {kind} and len({c["id"] for c in events[:-1]}) == 1
    choices = [c["choices"][0] for c in chunks]
    assert [ch["finish_reason"] for ch in choices] == [None] * (len(choices) - 1) + ["length"]
    if chat:
        assert choices[0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(ch["delta"].get("content", "") for ch in choices)
        assert text == whole["choices"][0]["message"]["content"]
    else:
        assert "".join(ch["text"] for ch in choices) == whole["choices"][0]["text"]
    assert chunks[-1]["speculation"]["completion_tokens"] == 12  # stats ride on the finishing chunk

    _, events = _stream(client, path, body)  # without include_usage: no usage chunk
    assert all(e == "[DONE]" or e["choices"] for e in events)


def test_streams_of_all_methods_agree(client: httpx.Client):
    texts = set()
    for method in ("none", "draft", "ngram"):
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 30, "temperature": 0,
                "speculation": {"method": method, "num_speculative_tokens": 5}}  # fmt: skip
        _, events = _stream(client, "/v1/completions", body)
        texts.add("".join(e["choices"][0]["text"] for e in events if e != "[DONE]"))
    assert len(texts) == 1
