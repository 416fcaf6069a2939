"""The engine thread's hand-off to the event loop: one wake-up per phase, first tokens at once."""

from __future__ import annotations

import asyncio

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.server.service import EngineService


def test_events_go_out_once_per_phase_and_the_first_token_right_after_prefill(tiny):
    engine = Engine(tiny["target"].model, tiny["draft"].model, max_batch_size=4)
    service = EngineService(engine, max_waiting=4)
    flushes: list[list[list[int]]] = []  # per hand-off: the token lists it carried
    flush = service._flush

    def spy() -> None:
        if service._pending:
            flushes.append([event.tokens for _, event in service._pending])
        flush()

    service._flush = spy

    async def run() -> list[int]:
        rows = [
            engine.make_row(p, SamplingParams(max_new_tokens=6), SpecParams(m, 2), request_id=str(i))
            for i, (p, m) in enumerate([([5, 6, 7], "none"), ([3, 4], "none"), ([8, 9], "draft")])
        ]
        queues = [service.submit(r) for r in rows]
        service.start()
        try:
            got = []
            for q in queues:
                while (event := await asyncio.wait_for(q.get(), 30)).row is None:
                    got += event.tokens
            return got
        finally:
            service.stop()

    tokens = asyncio.run(run())
    assert len(tokens) == 18
    # each method's prefill hands its first tokens over before any decode step: one token per row
    assert flushes[0] == [[tokens[0]], [tokens[6]]] and flushes[1] == [[tokens[12]]]
    # then one hand-off per sub-batch step carrying all its rows' events (none: 2 rows, draft: 1)
    assert flushes[2] == [[tokens[1]], [tokens[7]]] and len(flushes[3]) == 1


def test_idle_tasks_run_on_the_engine_thread_once_no_request_is_in_flight(tiny, monkeypatch):
    """Start-up's leftovers wait for IDLE_S without work: requests come first, also one sent right
    after another ends (a client's next request), each task runs alone on the engine thread, and
    one that fails does not stop the rest."""
    import threading
    import time

    from specserve.server import service as service_module

    monkeypatch.setattr(service_module, "IDLE_S", 0.5)
    engine = Engine(tiny["target"].model, max_batch_size=2)
    service = EngineService(engine, max_waiting=4)
    ran: list[tuple[str, bool, str, float]] = []  # (task, work in flight, thread, when)

    def task(name: str):
        def work() -> None:
            ran.append((name, engine.has_work(), threading.current_thread().name, time.monotonic()))
            if name == "fails":
                raise RuntimeError("no")

        return name, work

    async def serve(request_id: str) -> None:
        row = engine.make_row([5, 6, 7], SamplingParams(max_new_tokens=40, ignore_eos=True), SpecParams(),
                              request_id=request_id)  # fmt: skip
        q = service.submit(row)
        if not service._thread.is_alive():
            service.start()
        while (await asyncio.wait_for(q.get(), 30)).row is None:
            pass

    async def run() -> float:
        service.idle.extend([task("first"), task("fails"), task("last")])
        try:
            await serve("a")
            await asyncio.sleep(0.05)  # a client's think time, under IDLE_S
            await serve("b")
            served = time.monotonic()
            for _ in range(100):  # bounded: 10 s
                if len(ran) == 3:
                    break
                await asyncio.sleep(0.1)
            return served
        finally:
            service.stop()

    served = asyncio.run(run())
    assert [name for name, *_ in ran] == ["first", "fails", "last"] and not service.idle
    assert all(not busy and thread == "specserve-engine" for _, busy, thread, _ in ran)
    assert ran[0][3] > served
