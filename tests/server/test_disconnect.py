"""Clients that go away: a non-streaming request whose client closes its socket mid-generation is
aborted at the next step (the row emits every step, so this must not wait for a quiet moment); a
client that gives up while queued or mid-stream leaves one INFO line, not an ERROR traceback."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from live_harness import WAIT_S, LiveServer, serving, wait_until

MAX_TOKENS = 150


class Paced:
    """Lets the held engine take one step every `period` seconds, so a request takes long enough
    to disconnect from while it is decoding (and emitting every step)."""

    def __init__(self, gate, period: float = 0.01) -> None:
        self.gate, self.period, self.done = gate, period, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.period):
            self.gate.release(1)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.gate.open()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logs() -> Iterator[Records]:
    """Every record of uvicorn (its loggers do not propagate to the root) and of ours."""
    handler = Records()
    names = ["uvicorn", ""]  # (uvicorn.error propagates to uvicorn, ours to the root)
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
    logging.getLogger("specserve").setLevel(logging.INFO)
    yield handler
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.fixture
def paced_server(tiny_paths) -> Iterator[LiveServer]:
    with serving(tiny_paths, max_batch_size=1, max_waiting=4) as server:
        yield server


def _raw_post(live: LiveServer, path: str, body: dict) -> socket.socket:
    """Send a request on a raw socket and leave it open: the test closes it to disconnect."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=WAIT_S)
    sock.sendall(head + data)
    return sock


def _aborted(live: LiveServer) -> float:
    return (
        live.state.metrics.registry.get_sample_value(
            "specserve_request_success_total", {"finish_reason": "abort", "method": "none"}
        )
        or 0.0
    )


def _cancel_lines(logs: Records) -> list[str]:
    return [r.getMessage() for r in logs.records if "client disconnected" in r.getMessage()]


def _errors(logs: Records) -> list[str]:
    return [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_non_streaming_disconnect_mid_generation_aborts_at_the_next_step(
    paced_server: LiveServer, gate_factory, logs: Records, path: str
):
    live = paced_server
    finished: list = []
    live.state.service.finish_listeners.append(finished.append)
    before = _aborted(live)
    body = {"prompt": "def f(x):", "max_tokens": MAX_TOKENS, "ignore_eos": True}
    body |= {"method": "none"} if path == "/generate" else {"speculation": {"method": "none"}}
    pace = Paced(gate_factory(live))
    try:
        sock = _raw_post(live, path, body)
        batches = live.state.engine.batches
        wait_until(lambda: any(r.num_generated >= 3 for b in list(batches.values()) for r in b.rows[:]),
                   "the row to be decoding")  # fmt: skip
        sock.close()
        wait_until(lambda: bool(finished), "the row to finish")
        row = finished[0]
        assert row.finish_reason == "abort"
        assert row.num_generated < MAX_TOKENS // 2  # freed within a few paced steps, not at the end
        wait_until(lambda: _aborted(live) == before + 1, "the abort counter to move")
        wait_until(lambda: bool(_cancel_lines(logs)), "the cancellation line")
    finally:
        pace.stop()
        live.state.service.finish_listeners.remove(finished.append)
    (line,) = _cancel_lines(logs)
    assert row.request_id in line
    assert not _errors(logs)


def test_clients_that_give_up_while_queued_or_mid_stream_log_no_traceback(
    paced_server: LiveServer, gate_factory, logs: Records
):
    live = paced_server
    gate = gate_factory(live)
    try:
        running = _raw_post(live, "/generate", {"prompt": "a", "max_tokens": MAX_TOKENS, "ignore_eos": True,
                                                "stream": True})  # fmt: skip
        gate.release(1)
        wait_until(lambda: live.state.service.num_running == 1, "the first to run")
        queued = [_raw_post(live, p, {"prompt": "b", "max_tokens": 4, "model": None} if "v1" in p else
                            {"prompt": "b", "max_tokens": 4})  # fmt: skip
                  for p in ("/generate", "/v1/completions")]  # fmt: skip
        wait_until(lambda: live.state.service.num_waiting == 2, "two to queue")
        for sock in queued:
            sock.close()
        wait_until(lambda: len(_cancel_lines(logs)) == 2, "both queued cancellations")
        running.recv(1)  # the stream has started
        running.close()
        wait_until(lambda: not live.state.service.queues, "the stream to be dropped")
    finally:
        gate.open()
    wait_until(lambda: not live.state.engine.has_work(), "the engine to drain")
    time.sleep(0.2)  # anything uvicorn would log about the closed stream is written by now
    assert not _errors(logs), _errors(logs)
