"""While the decode steps warm up (compile), the server listens: /health and generation answer 503
with Retry-After, /metrics and /v1/models answer; then it serves."""

from __future__ import annotations

import threading

from live_harness import MODEL, start_server, wait_until

from specserve.server import app as app_module
from specserve.server.settings import Settings


def test_503_until_warm(tiny_paths, monkeypatch):
    release, entered = threading.Event(), threading.Event()
    seen = {}

    def slow_warm_up(engine, mode, methods, threads):
        seen.update(mode=mode, methods=methods, threads=threads)
        entered.set()
        release.wait(30)

    monkeypatch.setattr(app_module, "warm_up", slow_warm_up)
    settings = Settings(target=tiny_paths["target"], dtype="float64", threads=1, compile="on",
                        served_model_name=MODEL, num_speculative_tokens=3)  # fmt: skip
    live = start_server(settings, wait_ready=False)
    try:
        assert entered.wait(30)
        assert seen == {"mode": "on", "methods": ["none"], "threads": (1,)}  # the tuner's counts: --threads 1
        with live.http() as http:
            assert http.get("/health").status_code == 503
            r = http.post("/generate", json={"prompt": "def f():", "max_tokens": 4})
            assert r.status_code == 503 and r.headers["Retry-After"] == "5"
            assert "warming up" in r.json()["error"]["message"]
            assert http.get("/metrics").status_code == 200 and http.get("/v1/models").status_code == 200
            release.set()
            wait_until(lambda: http.get("/health").status_code == 200, "the warm-up to end", 30)
            assert http.post("/generate", json={"prompt": "def f():", "max_tokens": 4}).status_code == 200
    finally:
        release.set()
        live.stop()


def test_start_up_measures_the_k_policys_step_costs_unless_a_schedule_is_given(tiny_paths):
    base = {"target": tiny_paths["target"], "draft": tiny_paths["draft"], "dtype": "float64", "threads": 1,
            "compile": "off", "max_batch_size": 4}  # fmt: skip
    live = start_server(Settings(**base))
    try:
        costs = live.state.engine.policy.costs  # the default method's at batch size 1 when ready,
        every = {(m, b) for m in ("draft", "ngram") for b in (1, 2, 4)}  # the rest while idle
        assert ("draft", 1) in costs and set(costs) <= every
        with live.http() as http:  # /health counts what is left (bench serve waits for none)
            wait_until(
                lambda: http.get("/health").json()["warm_up_tasks_left"] == 0, "the idle-time warm-up", 60
            )
        assert set(costs) == every
    finally:
        live.stop()
    live = start_server(Settings(**base, speculation_schedule='{"*": {"1": 2, "3": 0}}'))
    try:
        policy = live.state.engine.policy
        assert policy.schedule == {"*": {1: 2, 3: 0}} and not policy.costs
        with live.http() as http:
            r = http.post("/generate", json={"prompt": "def f(x):", "max_tokens": 8, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["stats"]["draft_tokens"] > 0  # K = 2 at batch 1
    finally:
        live.stop()
