"""The official `openai` client against a live server: models, completions, chat, streaming, the
`speculation` extra field, and errors raised as the client's own exception classes."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from live_harness import API_KEY, MODEL, LiveServer

PROMPT = "def add(a, b):"
MESSAGES = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "for i in range(10):"},
]


def _chat_ids(tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def test_models_list_root_is_the_target_path(oai: openai.OpenAI, live: LiveServer, tiny_paths):
    (model,) = oai.models.list().data
    assert model.id == MODEL and model.object == "model" and model.owned_by == "specserve"
    extra = model.model_extra or {}
    assert extra["root"] == str(Path(tiny_paths["target"]).resolve()) == live.state.target.local_path
    assert extra["draft"] == str(Path(tiny_paths["draft"]).resolve())
    assert extra["max_model_len"] == 192
    assert set(extra["methods"]) == {"none", "draft", "ngram"} and extra["default_method"] == "draft"


def test_completion_equals_plain_greedy(oai: openai.OpenAI, tokenizer, reference):
    ids = tokenizer.encode(PROMPT)
    want, finish = reference(ids, 12)
    resp = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    (choice,) = resp.choices
    assert choice.text == tokenizer.decode(want, skip_special_tokens=True)
    assert choice.finish_reason == finish == "length"
    assert resp.object == "text_completion" and resp.model == MODEL
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (len(ids), len(want))
    assert resp.usage.total_tokens == len(ids) + len(want)
    again = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    assert again.choices[0].text == choice.text  # the prompt found in the prefix cache: same tokens
    details = again.usage.prompt_tokens_details if again.usage else None
    assert details is not None and details.cached_tokens == len(ids) - 1
    spec = (resp.model_extra or {})["speculation"]
    assert spec["method"] == "draft"  # the server default when a draft is loaded
    assert spec["prompt_tokens"] == len(ids) and spec["completion_tokens"] == len(want)


def test_model_may_be_named_by_its_path(oai: openai.OpenAI, live: LiveServer, tiny_paths):
    for name in (tiny_paths["target"], live.state.target.local_path):
        resp = oai.completions.create(model=name, prompt=[5, 6, 7], max_tokens=2, temperature=0)
        assert resp.model == name and resp.usage is not None and resp.usage.completion_tokens == 2


def test_chat_uses_the_chat_template(oai: openai.OpenAI, tokenizer, reference):
    ids = _chat_ids(tokenizer)
    want, finish = reference(ids, 10)
    resp = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0)
    (choice,) = resp.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == tokenizer.decode(want, skip_special_tokens=True)
    assert choice.finish_reason == finish
    assert resp.object == "chat.completion"
    assert resp.usage is not None and resp.usage.prompt_tokens == len(ids)


def test_chat_content_parts_and_max_completion_tokens(oai: openai.OpenAI, tokenizer, reference):
    parts = [{"type": "text", "text": "for i in "}, {"type": "text", "text": "range(10):"}]
    messages = [MESSAGES[0], {"role": "user", "content": parts}]
    resp = oai.chat.completions.create(
        model=MODEL, messages=messages, max_completion_tokens=6, max_tokens=50, temperature=0
    )
    want, _ = reference(_chat_ids(tokenizer), 6)
    assert resp.choices[0].message.content == tokenizer.decode(want, skip_special_tokens=True)
    assert resp.usage is not None and resp.usage.completion_tokens == 6


def test_streamed_completion_equals_the_whole(oai: openai.OpenAI):
    kw = {"model": MODEL, "prompt": PROMPT, "max_tokens": 20, "temperature": 0}
    whole = oai.completions.create(**kw)
    chunks = list(oai.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    *text_chunks, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert (text_chunks[-1].model_extra or {})["speculation"]["completion_tokens"] == 20
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "text_completion"


def test_streamed_chat_equals_the_whole(oai: openai.OpenAI):
    kw = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "temperature": 0}
    whole = oai.chat.completions.create(**kw)
    chunks = list(oai.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk
    assert chunks[0].object == "chat.completion.chunk"


@pytest.mark.parametrize(
    "method,k", [("none", None), ("draft", 1), ("draft", 3), ("ngram", 2), ("ngram", 5), ("draft", 16)]
)
def test_speculation_override_per_request(oai: openai.OpenAI, tokenizer, reference, method, k):
    """The method and K a request asks for are the ones its stats show, and output stays lossless."""
    n = 24
    ids = tokenizer.encode(PROMPT)
    speculation = {"method": method} | ({"num_speculative_tokens": k} if k else {})
    resp = oai.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=n,
        temperature=0,
        extra_body={"speculation": speculation, "ignore_eos": True},
    )
    want, _ = reference(ids, n, ignore_eos=True)
    assert resp.choices[0].text == tokenizer.decode(want, skip_special_tokens=True)
    s = (resp.model_extra or {})["speculation"]
    assert s["method"] == method and s["completion_tokens"] == n
    decode_forwards = s["target_forwards"] - 1  # the first token comes from the prefill
    if method == "none":
        assert s["draft_tokens"] == 0 and s["target_forwards"] == n
        return
    # every decode step proposes at most K; a draft model proposes exactly K until the budget ends
    assert s["draft_tokens"] <= k * decode_forwards
    if method == "draft":
        assert s["draft_tokens"] >= k * (decode_forwards - k)
    assert s["accepted_tokens"] <= s["draft_tokens"]
    assert s["mean_accepted_length"] == pytest.approx(n / s["target_forwards"])


def test_seeded_sampling_repeats(oai: openai.OpenAI):
    kw = {"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 0.9, "top_p": 0.95, "seed": 1234}
    for method in ("none", "draft", "ngram"):
        body = {"speculation": {"method": method}}
        a, b = (oai.completions.create(**kw, extra_body=body).choices[0].text for _ in range(2))
        assert a == b


def test_bad_request_error(oai: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, n=2)
    assert e.value.status_code == 400 and e.value.param == "n" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="exceeds the model context of 192") as e:
        oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=500)
    assert e.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:  # a streaming request fails before the stream
        oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, stream=True, stop=[""])
    assert e.value.param == "stop"


def test_not_found_error(oai: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as e:
        oai.completions.create(model="gpt-17", prompt=PROMPT, max_tokens=4)
    assert e.value.code == "model_not_found" and e.value.param == "model" and MODEL in e.value.message
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-17", messages=MESSAGES)


def test_authentication_error(live: LiveServer):
    bad = live.openai(api_key="wrong-" + API_KEY)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
