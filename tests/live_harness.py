"""Live servers for the HTTP tests: the real app under a real uvicorn on loopback, in a thread.

Every server stops by itself when its `serving` block ends; every wait is bounded. `EngineGate`
holds the engine thread between steps so a test can make a batch form, or fill the queue, without
relying on timing.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import uvicorn

from specserve.server.app import create_app
from specserve.server.settings import Settings
from specserve.server.state import ServerState

API_KEY = "test-key"
MODEL = "tiny-llama"
START_TIMEOUT_S = 60.0
BODY_LIMIT = 64 * 1024
WAIT_S = 30.0  # bound for every poll in these tests


def wait_until(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


@dataclass
class LiveServer:
    app: Any
    server: uvicorn.Server
    thread: threading.Thread
    port: int
    api_key: str | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> ServerState:
        return self.app.state.specserve

    def headers(self, key: str | None = None) -> dict[str, str]:
        key = key or self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def http(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout)

    def openai(self, api_key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1",
            api_key=api_key or self.api_key or "unused",
            max_retries=0,
            timeout=60.0,
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        if self.thread.is_alive():
            raise RuntimeError("the test server did not stop within 30 s")


def start_server(settings: Settings, wait_ready: bool = True) -> LiveServer:
    app = create_app(settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "uvicorn to start", START_TIMEOUT_S)
    if not server.started:
        raise RuntimeError("the test server failed to start (see the log above)")
    port = server.servers[0].sockets[0].getsockname()[1]
    live = LiveServer(
        app, server, thread, port, settings.api_key.get_secret_value() if settings.api_key else None
    )
    if wait_ready:
        wait_until(lambda: httpx.get(f"{live.url}/health", timeout=5).status_code == 200, "/health")
    return live


@contextlib.contextmanager
def serving(tiny_paths: dict[str, str], **overrides: Any) -> Iterator[LiveServer]:
    """A live server on the tiny float64 target (and random draft unless draft=None)."""
    kw: dict[str, Any] = {
        "target": tiny_paths["target"],
        "draft": tiny_paths["draft"],
        "dtype": "float64",
        "threads": 1,
        "max_batch_size": 8,
        "max_waiting": 64,
        "shutdown_timeout_s": 2.0,
        "served_model_name": MODEL,
        "compile": "off",
        "idle_warm_up": False,  # (tests/server/test_warmup.py runs it)
    }
    live = start_server(Settings(**(kw | overrides)))
    try:
        yield live
    finally:
        live.stop()


class EngineGate:
    """Holds the engine thread before each step until `release(n)` allows n more steps or `open()`.

    Installed as an instance attribute over `Engine.step`; the service thread looks it up each
    step. Each held step gives up after WAIT_S, so a failing test never wedges the server.
    """

    def __init__(self, state: ServerState) -> None:
        self.engine = state.engine
        self.real_step = self.engine.step
        self.permits = threading.Semaphore(0)
        self.opened = threading.Event()
        self.holding = threading.Event()  # the engine thread is waiting here

    def step(self) -> list:
        deadline = time.monotonic() + WAIT_S
        while not self.opened.is_set() and time.monotonic() < deadline:
            self.holding.set()
            if self.permits.acquire(timeout=0.01):
                break
        self.holding.clear()
        return self.real_step()

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()

    def open(self) -> None:
        self.opened.set()


def sse_data(lines: Iterator[str]) -> Iterator[dict | str]:
    """Parse `data: ...` frames: JSON objects, then the string "[DONE]"."""
    for line in lines:
        if not line.startswith("data: "):
            assert line == "", f"unexpected SSE line {line!r}"
            continue
        payload = line[len("data: ") :]
        yield payload if payload == "[DONE]" else json.loads(payload)
