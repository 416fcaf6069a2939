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
