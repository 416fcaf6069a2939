"""Bad input over raw HTTP: every failure is OpenAI's error JSON with the right status, never a 500;
the API key guards /v1 and /generate while /health stays open; body limit; unknown routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_harness import API_KEY, BODY_LIMIT, MODEL, LiveServer

CTX = 192  # max_position_embeddings of the tiny fixtures


def check_error(r: httpx.Response, status: int, param: str | None = None, match: str = "") -> dict:
    """The response is OpenAI's error shape with this status (and param, and message text)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] != "server_error"
    if param is not None:  # a union's member may follow the field ("stop.str"): the field comes first
        assert err["param"] is not None and err["param"].split(".")[: param.count(".") + 1] == param.split(
            "."
        ), err
    assert match.lower() in err["message"].lower(), err
    return err


def cmpl(**kw: Any) -> dict:
    return {"model": MODEL, "prompt": "def add(a, b):", "max_tokens": 4} | kw


def chat(**kw: Any) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4} | kw


def gen(**kw: Any) -> dict:
    return {"prompt": "def add(a, b):", "max_tokens": 4} | kw


C, CH, G = "/v1/completions", "/v1/chat/completions", "/generate"
# (path, JSON body, param the error names or None to skip that check, text the message contains)
MALFORMED: list[tuple[str, Any, str | None, str]] = [
    (C, [], None, ""),
    (C, "a string", None, ""),
    (C, {"max_tokens": 4}, "prompt", "field required"),
    (C, {"model": MODEL}, "prompt", "field required"),
    (C, cmpl(prompt=5), None, ""),
    (C, cmpl(prompt=[]), None, "prompt is empty"),
    (C, cmpl(prompt=""), None, "prompt is empty"),
    (C, cmpl(prompt=[1, "a"]), None, ""),
    (C, cmpl(prompt=[100_000]), None, "token ids must lie in"),
    (C, cmpl(prompt=[-1]), None, "token ids must lie in"),
    (C, cmpl(prompt=[2**70]), None, ""),
    (C, cmpl(prompt=["a", "b"]), "prompt", "2 prompts"),
    (C, cmpl(prompt=[[1, 2], [3]]), None, ""),
    (C, cmpl(max_tokens=0), "max_tokens", ""),
    (C, cmpl(max_tokens=-3), "max_tokens", ""),
    (C, cmpl(max_tokens="many"), "max_tokens", ""),
    (C, cmpl(max_tokens=1.5), "max_tokens", ""),
    (C, cmpl(max_tokens=10**6), "max_tokens", "exceeds the model context of 192"),
    (C, cmpl(max_tokens=2**70), "max_tokens", "exceeds the model context"),
    (C, cmpl(prompt=list(range(2, 102)), max_tokens=CTX - 99), "max_tokens", "prompt (100 tokens)"),
    (C, cmpl(prompt=list(range(2, 2 + CTX))), "max_tokens", "exceeds the model context"),
    (C, cmpl(temperature=-1), "temperature", ""),
    (C, cmpl(temperature=2.5), "temperature", ""),
    (C, cmpl(temperature="hot"), "temperature", ""),
    (C, cmpl(top_p=0), "top_p", ""),
    (C, cmpl(top_p=1.5), "top_p", ""),
    (C, cmpl(top_k=-1), "top_k", ""),
    (C, cmpl(top_k=2**70, temperature=1), "top_k", ""),
    (C, cmpl(seed=-1), "seed", ""),
    (C, cmpl(seed=2**64), "seed", ""),
    (C, cmpl(n=17), "n", "less than or equal to 16"),
    (C, cmpl(n=2, best_of=3), "best_of", "not supported"),
    (C, cmpl(logprobs=21), "logprobs", "less than or equal to 20"),
    (C, cmpl(logprobs=-1), "logprobs", ""),
    (C, cmpl(n=0), "n", ""),
    (C, cmpl(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (C, cmpl(stop=[""]), "stop", "non-empty"),
    (C, cmpl(stop=5), "stop", ""),
    (C, cmpl(echo=True), "echo", "not supported"),
    (C, cmpl(presence_penalty=0.5), "presence_penalty", "not supported"),
    (C, cmpl(stream="yes please"), "stream", ""),
    (C, cmpl(stream=True, stream_options="usage"), "stream_options", ""),
    (C, cmpl(speculation={"method": "medusa"}), "speculation.method", ""),
    (C, cmpl(speculation={"method": "beam"}), "speculation.method", ""),
    (C, cmpl(speculation={"num_speculative_tokens": 0}), "speculation.num_speculative_tokens", ""),
    (C, cmpl(speculation={"num_speculative_tokens": 17}), "speculation.num_speculative_tokens", ""),
    (C, cmpl(speculation={"k": 3}), "speculation.k", ""),
    (C, cmpl(speculation="draft"), "speculation", ""),
    (CH, {"model": MODEL}, "messages", "field required"),
    (CH, chat(messages=[]), "messages", ""),
    (CH, chat(messages="hi"), "messages", ""),
    (CH, chat(messages=[{"role": "robot", "content": "hi"}]), None, ""),
    (CH, chat(messages=[{"content": "hi"}]), None, ""),
    (CH, chat(messages=[{"role": "user", "content": 5}]), None, ""),
    (CH, chat(max_tokens=0), "max_tokens", ""),
    (CH, chat(max_completion_tokens=0), "max_completion_tokens", ""),
    (CH, chat(max_tokens=CTX), "max_tokens", "exceeds the model context"),
    (CH, chat(messages=[{"role": "user", "content": "x" * 400}], max_tokens=None), None, ""),
    (CH, chat(n=0), "n", ""),
    (CH, chat(top_logprobs=2), None, "top_logprobs needs logprobs: true"),
    (CH, chat(logprobs=True, top_logprobs=21), "top_logprobs", ""),
    (CH, chat(speculation={"method": "ngram", "num_speculative_tokens": 99}), None, ""),
    (G, {}, "prompt", "exactly one of"),
    (G, gen(prompt_token_ids=[1, 2]), "prompt", "exactly one of"),
    (G, {"prompt_token_ids": [1.5]}, None, ""),
    (G, {"prompt_token_ids": []}, None, "prompt is empty"),
    (G, {"prompt_token_ids": [5, 99_999]}, None, "token ids must lie in"),
    (G, gen(prompt=""), None, "prompt is empty"),
    (G, gen(max_tokens=0), "max_tokens", ""),
    (G, gen(max_tokens=CTX), "max_tokens", "exceeds the model context"),
    (G, gen(method="beam"), "method", ""),
    (G, gen(method="medusa"), None, ""),  # not loaded here
    (G, gen(method="eagle"), None, ""),  # not loaded here
    (G, gen(num_speculative_tokens=99), "num_speculative_tokens", ""),
    (G, gen(temperature=3), "temperature", ""),
    (G, gen(top_k=2**70, temperature=0.5), "top_k", ""),
    (G, gen(stop=["x"] * 5), "stop", ""),
    (G, gen(n=2), "n", "use /v1/completions for n > 1"),
    (G, gen(logprobs=99), "logprobs", ""),
]


@pytest.mark.parametrize(
    "path,body,param,match", MALFORMED, ids=[f"{p}:{json.dumps(b)[:60]}" for p, b, _, _ in MALFORMED]
)
def test_malformed_request_is_a_400(client: httpx.Client, path, body, param, match):
    check_error(client.post(path, json=body), 400, param, match)


@pytest.mark.parametrize(
    "raw,content_type",
    [
        (b"{not json", "application/json"),
        (b'{"model": "x", "prompt": "a",}', "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"[" * 3000 + b"]" * 3000, "application/json"),
        (b'{"model": "tiny-llama", "prompt": "a", "max_tokens": 2}', "text/plain"),
        (b"model=tiny-llama&prompt=a", "application/x-www-form-urlencoded"),
    ],
    ids=["truncated", "trailing-comma", "empty", "binary", "deeply-nested", "text-plain", "form"],
)
def test_unparseable_body_is_a_400(client: httpx.Client, raw: bytes, content_type: str):
    for path in (C, CH, G):
        check_error(client.post(path, content=raw, headers={"content-type": content_type}), 400)


def test_malformed_json_names_itself(client: httpx.Client):
    err = check_error(client.post(C, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert err["code"] == "json_invalid" and "malformed JSON" in err["message"]


def test_lone_surrogate_is_a_400(client: httpx.Client):
    """JSON may escape a lone UTF-16 surrogate; it is not text a tokenizer can encode."""
    cases = [
        (C, b'{"model": "tiny-llama", "prompt": "ab\\ud800cd", "max_tokens": 2}', "prompt"),
        (C, b'{"model": "tiny-llama", "prompt": ["\\udfff"], "max_tokens": 2}', "prompt"),
        (G, b'{"prompt": "\\ud83d", "max_tokens": 2}', "prompt"),
        (CH, b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "a\\ud800"}]}', "messages"),
        (CH, b'{"model": "tiny-llama", "messages": [{"role": "user", "content": '
         b'[{"type": "text", "text": "\\ud800"}]}]}', "messages"),
    ]  # fmt: skip
    for path, raw, param in cases:
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        check_error(r, 400, param, "lone surrogate")
    # a surrogate *pair* is one character, and fine
    raw = b'{"model": "tiny-llama", "prompt": "a\\ud83d\\ude00", "max_tokens": 2}'
    assert client.post(C, content=raw, headers={"content-type": "application/json"}).status_code == 200


# odd but valid: each is served (200), never a 500
VALID_EDGES: list[tuple[str, dict]] = [
    (C, cmpl(temperature=1e-300, seed=1)),
    (C, cmpl(temperature=2.0, top_p=1e-300, seed=2)),
    (
        C,
        cmpl(temperature=1.0, top_k=1, seed=3, speculation={"method": "draft", "num_speculative_tokens": 16}),
    ),
    (C, cmpl(temperature=0.7, top_k=2**31 - 1, top_p=0.5, seed=2**63 - 1, speculation={"method": "ngram"})),
    (C, cmpl(temperature=1e-300, seed=4, speculation={"method": "draft"})),
    (C, cmpl(prompt=[5], max_tokens=CTX - 1, ignore_eos=True, speculation={"method": "draft"})),
    (C, cmpl(prompt="héllo wörld 😀 中文", stop=["😀", "\n"], max_tokens=8)),
    (C, cmpl(prompt=["one prompt in a list"], stop="x", logprobs=0, user="someone", metadata={"a": 1})),
    (C, cmpl(max_tokens=None)),
    (CH, chat(max_tokens=None, messages=[{"role": "user", "content": None}])),
    (CH, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])),
    (CH, chat(stream_options={"include_usage": True})),
    (G, dict(prompt_token_ids=[1] * 100, max_tokens=CTX - 100, method="ngram", num_speculative_tokens=16)),
    (G, gen(temperature=1e-300, method="draft", seed=0)),
]


@pytest.mark.parametrize("path,body", VALID_EDGES, ids=[f"{p}:{json.dumps(b)[:60]}" for p, b in VALID_EDGES])
def test_odd_but_valid_request_is_served(client: httpx.Client, path: str, body: dict):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text


def test_chat_without_a_template_is_a_clear_400(client: httpx.Client, live: LiveServer, monkeypatch):
    monkeypatch.setattr(live.state.target.tokenizer, "chat_template", None)
    check_error(client.post(CH, json=chat()), 400, "messages", "no chat template")
    assert client.post(C, json=cmpl()).status_code == 200  # completions still work


def test_unknown_model_is_a_404(client: httpx.Client):
    for path, body in ((C, cmpl(model="gpt-17")), (CH, chat(model="gpt-17"))):
        err = check_error(client.post(path, json=body), 404, "model", "'gpt-17' does not exist")
        assert err["code"] == "model_not_found" and err["type"] == "not_found_error"


def test_model_may_be_omitted_as_in_vllm_and_tgi(client: httpx.Client):
    unnamed = [(C, cmpl()), (CH, chat())]
    for _, body in unnamed:
        del body["model"]
    for path, body in [*unnamed, (C, cmpl(model=None)), (CH, chat(model=None))]:
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == MODEL  # answered as the served model
    with client.stream("POST", C, json={"prompt": "x", "max_tokens": 2, "stream": True}) as r:
        frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert frames and all(f["model"] == MODEL for f in frames)


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/v1/nope"), ("GET", "/v1/models/x/y")])
def test_unknown_route_is_a_404_json(client: httpx.Client, method: str, path: str):
    check_error(client.request(method, path), 404, None, "not found")


def test_wrong_http_method_is_a_405_json(client: httpx.Client):
    check_error(client.get(C), 405)
    check_error(client.put(G, json=gen()), 405)


@pytest.fixture
def anonymous(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


AUTH_CASES = [None, "Bearer wrong", f"Basic {API_KEY}", f"Bearer {API_KEY}x", "Bearer", API_KEY]


@pytest.mark.parametrize("authorization", AUTH_CASES, ids=lambda a: repr(a))
def test_missing_or_invalid_key_is_a_401(anonymous: httpx.Client, authorization: str | None):
    headers = {"Authorization": authorization} if authorization is not None else {}
    for method, path, body in (("GET", "/v1/models", None), ("POST", C, cmpl()), ("POST", CH, chat()),
                               ("POST", G, gen()), ("POST", C, {"bad": "body"})):  # fmt: skip
        r = anonymous.request(method, path, json=body, headers=headers)
        err = check_error(r, 401, None, "API key")
        assert err["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"


def test_valid_key_in_any_scheme_case(anonymous: httpx.Client):
    for auth in (f"Bearer {API_KEY}", f"bearer {API_KEY}", f"BEARER  {API_KEY}"):
        assert anonymous.get("/v1/models", headers={"Authorization": auth}).status_code == 200, auth


def test_health_and_metrics_stay_open(anonymous: httpx.Client):
    r = anonymous.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "warm_up_tasks_left": 0}  # (harness: none)
    r = anonymous.get("/metrics")
    assert r.status_code == 200 and "specserve_num_requests_running" in r.text


def test_body_over_the_limit_is_a_413(client: httpx.Client):
    big = cmpl(prompt="x" * (BODY_LIMIT + 10))
    check_error(client.post(C, json=big), 413, None, f"exceeds {BODY_LIMIT} bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts the chunked body
        data = json.dumps(big).encode()
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    check_error(client.post(G, content=chunks(), headers={"content-type": "application/json"}), 413)
    # just under the limit is parsed as usual (here: a prompt too long for the context -> 400)
    ok = cmpl(prompt="x" * (BODY_LIMIT - 200))
    assert len(json.dumps(ok)) < BODY_LIMIT
    check_error(client.post(C, json=ok), 400, "max_tokens")


def test_503_while_the_models_load(tiny_paths):
    """Before the lifespan has loaded the models (TestClient outside `with`: no lifespan)."""
    from fastapi.testclient import TestClient

    from specserve.server.app import create_app
    from specserve.server.settings import Settings

    app = create_app(Settings(target=tiny_paths["target"], dtype="float64", compile="off"))
    c = TestClient(app)
    r = c.get("/health")
    assert r.status_code == 503 and r.json() == {"status": "unavailable"}
    check_error(c.get("/v1/models"), 503, None, "still loading")
    check_error(c.post(C, json=cmpl()), 503, None, "still loading")


def test_server_keeps_serving_after_bad_input(client: httpx.Client):
    r = client.post(G, json=gen(max_tokens=3))
    assert r.status_code == 200 and len(r.json()["token_ids"]) == 3
