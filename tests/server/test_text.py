"""Incremental detokenization (server/text.py) with the byte-level tokenizer, then stop strings and
finish reasons end to end: EOS -> "stop", max_tokens or a full context -> "length", stop string -> "stop"."""

from __future__ import annotations

import httpx
import pytest
from live_harness import MODEL, sse_data

from specserve.server.text import TextStream

MIXED = "é中😀"  # 2 + 3 + 4 UTF-8 bytes: one byte-level token each


def _push_each(stream: TextStream, ids: list[int]) -> list[str]:
    return [stream.push([i]) for i in ids]


def test_never_splits_a_utf8_character(tokenizer):
    ids = tokenizer.encode("a" + MIXED + "b")
    # the tokens really split characters: alone, some decode to the replacement character
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    stream = TextStream(tokenizer)
    out = ""
    for delta in _push_each(stream, ids):
        assert "\ufffd" not in delta
        out += delta
        assert ("a" + MIXED + "b").startswith(out)
    assert out + stream.finish() == "a" + MIXED + "b"


def test_each_character_is_released_when_its_last_byte_arrives(tokenizer):
    stream = TextStream(tokenizer)
    deltas = _push_each(stream, tokenizer.encode(MIXED))
    assert deltas == ["", "é", "", "", "中", "", "", "", "😀"]
    assert stream.finish() == "" and stream.text == MIXED


def test_an_unfinished_character_at_the_end_is_released_as_replacement(tokenizer):
    stream = TextStream(tokenizer)
    ids = tokenizer.encode("x😀")
    assert _push_each(stream, ids[:3]) == ["x", "", ""]
    assert stream.finish() == "\ufffd"  # the generation ended inside a character: say so, once
    assert stream.finish() == ""


def test_special_tokens_are_not_text(tokenizer):
    stream = TextStream(tokenizer)
    ids = (
        tokenizer.encode("def") + [tokenizer.pad_token_id] + tokenizer.encode(" a") + [tokenizer.eos_token_id]
    )
    assert "".join(_push_each(stream, ids)) + stream.finish() == "def a"


def test_stop_string_truncates_and_is_never_streamed_partially(tokenizer):
    text = "    return a + b\n"
    ids = tokenizer.encode(text)
    stream = TextStream(tokenizer, stop=["a + b"])  # spans the tokens ' a', ' +', ' b'
    released = ""
    for i in ids:
        released += stream.push([i])
        assert "    return ".startswith(released)  # nothing of the stop string ever goes out
        if stream.stopped:
            break
    assert stream.stopped and stream.text == "    return "
    assert released + stream.finish() == "    return "
    assert stream.push(tokenizer.encode("more")) == "" and stream.finish() == ""


def test_a_held_back_prefix_is_released_once_it_cannot_be_a_stop(tokenizer):
    stream = TextStream(tokenizer, stop=["a + c"])
    deltas = _push_each(stream, tokenizer.encode("    return a + b\n"))
    # ' a' and ' +' could still begin "a + c": held back until ' b' rules it out
    assert deltas[3:7] == ["urn", " ", "", "a + b"]
    assert not stream.stopped and "".join(deltas) + stream.finish() == "    return a + b\n"


def test_the_earliest_stop_string_wins(tokenizer):
    stream = TextStream(tokenizer, stop=["b):", "(a", "zzz", ""])
    released = stream.push(tokenizer.encode("def add(a, b):\n"))
    assert stream.stopped and released == "def add" and stream.finish() == ""


def test_stop_string_at_the_very_start(tokenizer):
    stream = TextStream(tokenizer, stop=["def"])
    assert stream.push(tokenizer.encode("def add")) == "" and stream.stopped and stream.text == ""


def test_a_stop_string_that_is_also_cut_by_utf8(tokenizer):
    stream = TextStream(tokenizer, stop=["中😀"])
    released = "".join(_push_each(stream, tokenizer.encode("é" + MIXED + "!")))
    assert stream.stopped and released + stream.finish() == "éé"


# ---- end to end, on the shared live server ----


def _stop_for(text: str, start: int = 4) -> tuple[str, str]:
    """A 2-character stop string found in `text` after `start` (no U+FFFD), and the text before it."""
    for i in range(start, len(text) - 1):
        stop = text[i : i + 2]
        if "\ufffd" not in stop and stop.strip() and text.find(stop) >= start:
            return stop, text[: text.find(stop)]
    raise AssertionError(f"no usable stop string in {text!r}")


@pytest.mark.parametrize("method", ["none", "draft", "ngram"])
def test_stop_string_end_to_end(client: httpx.Client, tokenizer, reference, method):
    ids = tokenizer.encode("for i in range(10):")
    want, _ = reference(ids, 40, ignore_eos=True)
    stop, before = _stop_for(tokenizer.decode(want, skip_special_tokens=True))
    body = {"model": MODEL, "prompt": ids, "max_tokens": 40, "ignore_eos": True, "temperature": 0,
            "stop": ["never-there", stop], "speculation": {"method": method}}  # fmt: skip
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (before, "stop")

    with client.stream("POST", "/v1/completions", json=body | {"stream": True}) as resp:
        chunks = [c for c in sse_data(resp.iter_lines()) if c != "[DONE]"]
    streamed = [c["choices"][0]["text"] for c in chunks]
    assert "".join(streamed) == before and all(stop not in s for s in streamed)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    r = client.post("/generate", json={"prompt_token_ids": ids, "max_tokens": 40, "ignore_eos": True,
                                       "stop": [stop], "method": method})  # fmt: skip
    assert (r.json()["text"], r.json()["finish_reason"]) == (before, "stop")


def test_finish_reason_stop_at_eos(client: httpx.Client, tokenizer, eos_prompt):
    prompt, generated = eos_prompt
    assert generated[-1] == tokenizer.eos_token_id
    for method in ("none", "draft", "ngram"):
        r = client.post("/generate", json={"prompt_token_ids": prompt, "max_tokens": 64, "method": method})
        out = r.json()
        assert (out["token_ids"], out["finish_reason"]) == (generated, "stop")
        assert out["text"] == tokenizer.decode(generated, skip_special_tokens=True)
        assert tokenizer.eos_token not in out["text"]
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 64, "temperature": 0,
                "speculation": {"method": method}}  # fmt: skip
        choice = client.post("/v1/completions", json=body).json()["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == (out["text"], "stop")
    # with ignore_eos the same prompt runs to max_tokens
    r = client.post("/generate", json={"prompt_token_ids": prompt, "max_tokens": 64, "ignore_eos": True})
    assert r.json()["finish_reason"] == "length" and len(r.json()["token_ids"]) == 64


def test_finish_reason_length(client: httpx.Client):
    body = {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    # the context fills up: also "length"
    r = client.post("/generate", json={"prompt_token_ids": [5] * 150, "max_tokens": 42, "ignore_eos": True})
    assert r.json()["finish_reason"] == "length" and len(r.json()["token_ids"]) == 42
    r = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 150}], "ignore_eos": True},
    )
    out = r.json()  # no max_tokens in chat: whatever room the context leaves
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"] == 192
