"""SIGTERM: the server stops accepting, lets the request in flight finish, and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
from live_harness import wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_in_flight_and_exits_zero(tiny_paths):
    port = _free_port()
    env = os.environ | {"SPECSERVE_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "specserve", "serve", "--target", tiny_paths["target"], "--dtype", "float64",
         "--port", str(port), "--threads", "1", "--compile", "off"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), "the server to load", 90)
        got: dict = {}

        def long_request() -> None:  # long enough to be in flight when SIGTERM lands
            body = {"prompt": "def add(a, b):", "max_tokens": 180, "ignore_eos": True}
            got["response"] = httpx.post(f"{url}/generate", json=body, timeout=60)

        t = threading.Thread(target=long_request)
        t.start()
        wait_until(lambda: _running(url), "the request to be decoding", 30)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert proc.wait(60) == 0
        r = got["response"]
        assert r.status_code == 200
        out = r.json()
        assert out["finish_reason"] == "length" and len(out["token_ids"]) == 180
        assert not _healthy(url)  # and it no longer accepts connections
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _running(url: str) -> bool:
    text = httpx.get(f"{url}/metrics", timeout=2).text
    return "specserve_num_requests_running 1.0" in text


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
