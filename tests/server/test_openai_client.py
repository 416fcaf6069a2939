"""The official `openai` client against a live server: models, completions, chat, streaming, the
`speculation` extra field, and errors raised as the client's own exception classes."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import torch
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
        oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, n=2, best_of=3)
    assert (
        e.value.status_code == 400 and e.value.param == "best_of" and e.value.type == "invalid_request_error"
    )
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


def _direct_logprobs(live: LiveServer, prompt_ids: list[int], generated: list[int]) -> torch.Tensor:
    """[n, V] the target's log-softmax at each generated position, from one forward."""
    model = live.state.target.model
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + generated])).logits[0, len(prompt_ids) - 1 : -1]
    return logits.log_softmax(-1)


@pytest.mark.parametrize("method", ["none", "draft", "ngram"])
def test_completion_logprobs_are_the_targets_whatever_the_method(
    oai, live: LiveServer, tokenizer, reference, method
):
    ids = tokenizer.encode(PROMPT)
    resp = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, logprobs=3,
                                  extra_body={"speculation": {"method": method}})  # fmt: skip
    (choice,) = resp.choices
    lp = choice.logprobs
    generated, _ = reference(ids, 10)  # plain greedy token ids (the text may not re-encode to them)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 10
    assert lp.tokens == [tokenizer.decode([t]) for t in generated]
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:j]) for j in range(10)]
    want = _direct_logprobs(live, ids, generated)
    for j, (tok, got, top) in enumerate(zip(generated, lp.token_logprobs, lp.top_logprobs, strict=True)):
        assert got == pytest.approx(want[j, tok].item(), abs=1e-9)
        assert max(top.values()) == pytest.approx(got, abs=1e-9)  # greedy: the chosen is the best
        best3 = {tokenizer.decode([t]) for t in want[j].topk(3).indices.tolist()}
        assert set(top) == best3  # (keyed by text, as OpenAI's format: tokens that print alike merge)


def test_chat_logprobs_and_top_logprobs_streamed_and_whole(oai):
    kw = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "logprobs": True,
          "top_logprobs": 2}  # fmt: skip
    whole = oai.chat.completions.create(**kw).choices[0]
    content = whole.logprobs.content
    assert len(content) == 8
    for c in content:
        assert len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob == pytest.approx(c.logprob)
        assert bytes(c.bytes) == c.token.encode()
    parts = [ch.choices[0].logprobs for ch in oai.chat.completions.create(**kw, stream=True)
             if ch.choices and ch.choices[0].logprobs]  # fmt: skip
    streamed = [c for p in parts for c in p.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    # the same tokens; their logprobs to rounding (the two requests' steps may verify different
    # numbers of candidates, and a matmul of another shape rounds the last bit differently)
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=1e-9)
    plain = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == whole.message.content


def test_sampled_logprobs_are_after_temperature_and_top_k(oai, live: LiveServer, tokenizer):
    kw = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0.5, "seed": 3, "top_k": 3}
    resp = oai.completions.create(model=MODEL, logprobs=1, **{k: v for k, v in kw.items() if k != "top_k"},
                                  extra_body={"top_k": 3, "speculation": {"method": "ngram"}})  # fmt: skip
    lp = resp.choices[0].logprobs
    with live.http() as http:  # the same seeded request natively: its token ids and logprobs
        native = http.post("/generate", json=kw | {"method": "none", "logprobs": 0}).json()
    generated = native["token_ids"]
    assert lp.token_logprobs == pytest.approx([e["logprob"] for e in native["logprobs"]], abs=1e-9)
    assert [e["token_id"] for e in native["logprobs"]] == generated
    logits = _direct_logprobs(live, tokenizer.encode(PROMPT), generated) / 0.5  # (log-softmax + const)
    top3 = logits.topk(3, dim=-1)
    for j, tok in enumerate(generated):
        kept = top3.values[j]
        want = (logits[j, tok] - kept.logsumexp(-1)).item()  # renormalised over the 3 kept tokens
        assert tok in top3.indices[j].tolist() and lp.token_logprobs[j] == pytest.approx(want, abs=1e-9)


def test_n_choices_seeded_and_greedy(oai):
    kw = {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0.9, "seed": 77}
    two = oai.completions.create(**kw, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    one = oai.completions.create(**kw)
    assert two.choices[0].text == one.choices[0].text  # choice 0 keeps the seed
    assert two.choices[1].text != two.choices[0].text  # choice 1 derives its own
    assert two.usage.completion_tokens == 24 and two.usage.prompt_tokens == one.usage.prompt_tokens
    again = oai.completions.create(**kw, n=2)
    assert [c.text for c in again.choices] == [c.text for c in two.choices]
    greedy = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, n=3)
    assert len({c.message.content for c in greedy.choices}) == 1 and len(greedy.choices) == 3
    streamed: dict[int, str] = {}
    for ch in oai.completions.create(**kw, n=2, stream=True):
        for c in ch.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == {0: two.choices[0].text, 1: two.choices[1].text}
