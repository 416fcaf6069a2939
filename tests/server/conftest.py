"""Fixtures for the server tests: a shared live server, clients, the engine gate, references."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from live_harness import API_KEY, BODY_LIMIT, EngineGate, LiveServer, serving, wait_until


@pytest.fixture(scope="session")
def live(tiny_paths) -> Iterator[LiveServer]:
    """The shared server: target + random draft, an API key, up to 32 rows per batch, 64 KiB bodies."""
    with serving(tiny_paths, api_key=API_KEY, max_batch_size=32, max_body_bytes=BODY_LIMIT) as server:
        yield server


@pytest.fixture(scope="session")
def small(tiny_paths) -> Iterator[LiveServer]:
    """One batch slot and one waiting place (so 2 requests in the server, a 3rd gets 429); no key."""
    with serving(tiny_paths, max_batch_size=1, max_waiting=1) as server:
        yield server


@pytest.fixture(scope="session")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.http() as c:
        yield c


@pytest.fixture(scope="session")
def oai(live: LiveServer) -> openai.OpenAI:
    return live.openai()


@pytest.fixture
def gate_factory() -> Iterator[Callable[[LiveServer], EngineGate]]:
    """Close an engine's gate for one test; it is opened and removed again afterwards."""
    gates: list[EngineGate] = []

    def make(server: LiveServer) -> EngineGate:
        # an idle engine: the next step it starts is a held one
        wait_until(lambda: not server.state.engine.has_work(), "the engine to go idle")
        gate = EngineGate(server.state)
        server.state.engine.step = gate.step  # type: ignore[method-assign]
        gates.append(gate)
        return gate

    yield make
    for gate in gates:
        gate.open()
        with contextlib.suppress(AttributeError):
            del gate.engine.step  # back to the class's method


@pytest.fixture(scope="session")
def reference(tiny) -> Callable[..., tuple[list[int], str]]:
    """Greedy plain decoding of one prompt alone (batch size 1, in process): (token ids, finish reason)."""
    from specserve.decoding import Engine, SamplingParams, SpecParams

    target = tiny["target"]
    engine = Engine(target.model, eos_token_ids=target.eos_token_ids, max_batch_size=1)
    cache: dict[tuple, tuple[list[int], str]] = {}

    def run(prompt_ids: list[int], max_tokens: int, ignore_eos: bool = False) -> tuple[list[int], str]:
        key = (tuple(prompt_ids), max_tokens, ignore_eos)
        if key not in cache:
            sampling = SamplingParams(max_new_tokens=max_tokens, ignore_eos=ignore_eos)
            (res,) = engine.generate([list(prompt_ids)], sampling, SpecParams())
            cache[key] = (res.token_ids, res.finish_reason)
        return cache[key]

    return run


@pytest.fixture(scope="session")
def eos_prompt(tiny) -> tuple[list[int], list[int]]:
    """A prompt whose greedy continuation ends with EOS within 64 tokens: (prompt ids, generated ids).

    Found by a seeded search (the random tiny target rarely emits EOS), batched in process.
    """
    import torch

    from specserve.decoding import Engine, SamplingParams, SpecParams

    target = tiny["target"]
    engine = Engine(target.model, eos_token_ids=target.eos_token_ids, max_batch_size=48)
    vocab = target.model.config.vocab_size
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        prompts = [torch.randint(2, vocab, (n,), generator=g).tolist() for n in range(2, 50)]
        results = engine.generate(prompts, SamplingParams(max_new_tokens=64), SpecParams())
        for p, r in zip(prompts, results, strict=True):
            if r.finish_reason == "stop":
                return p, r.token_ids
    pytest.fail("no prompt found whose greedy continuation reaches EOS")
