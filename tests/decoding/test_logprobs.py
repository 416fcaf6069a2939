"""Logprobs of emitted tokens: the target's own log-softmax at each position (checked against a
direct forward over the whole sequence), unchanged by speculation (every method, batch 1 and 4, a
random and a same draft), after the request's temperature / top-k under sampling, and cut with the
tokens at a stop."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_heads

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.logprobs import FILTERED
from specserve.decoding.sampling import Warp, warp_probs

PROMPT_LENS = (5, 11, 3, 17)
MAX_NEW = (12, 7, 15, 9)
TOP = 3


@pytest.fixture(scope="module")
def prompts(tiny):
    g = torch.Generator().manual_seed(5)
    vocab = tiny["target"].model.config.vocab_size
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in PROMPT_LENS]


def _run(tiny, prompts, method, draft, batch_size, **sampling):
    kw = {"medusa": random_heads(tiny["target"].model)} if method == "medusa" else {}
    draft_model = {None: None, "random": tiny["draft"].model, "same": tiny["target"].model}[draft]
    engine = Engine(tiny["target"].model, draft_model, eos_token_ids=tiny["target"].eos_token_ids,
                    max_batch_size=batch_size, **kw)  # fmt: skip
    params = [SamplingParams(max_new_tokens=n, logprobs=TOP, **sampling) for n in MAX_NEW]
    return engine.generate(prompts, params, SpecParams(method, 3))


def _direct(model, prompt: list[int], generated: list[int], warp: Warp | None = None) -> torch.Tensor:
    """[n, V] log-probabilities of each generated position from one forward over everything."""
    ids = torch.tensor([prompt + generated])
    logits = model(ids).logits[0, len(prompt) - 1 : -1]  # [n, V]
    if warp is None:
        return logits.log_softmax(-1)
    return warp_probs(logits[None], warp)[0].log()


@pytest.fixture(scope="module")
def plain(tiny, prompts):
    return _run(tiny, prompts, "none", None, 1)


def test_plain_logprobs_are_the_targets_log_softmax(tiny, prompts, plain):
    for p, r in zip(prompts, plain, strict=True):
        assert len(r.logprobs) == len(r.token_ids) > 0
        want = _direct(tiny["target"].model, p, r.token_ids)  # [n, V]
        for j, lp in enumerate(r.logprobs):
            assert lp.token == r.token_ids[j]
            assert lp.logprob == pytest.approx(want[j, lp.token].item(), abs=1e-9)
            top_v, top_i = want[j].topk(TOP)
            assert [t for t, _ in lp.top] == top_i.tolist()
            assert [v for _, v in lp.top] == pytest.approx(top_v.tolist(), abs=1e-9)
            assert lp.top[0][0] == lp.token  # greedy: the chosen token is the most likely


@pytest.mark.parametrize(
    "method,draft,batch_size",
    [("draft", "random", 1), ("draft", "same", 4), ("draft", "random", 4), ("ngram", None, 4),
     ("medusa", None, 1), ("medusa", None, 4), ("none", None, 4)],
)  # fmt: skip
def test_speculation_does_not_change_logprobs(tiny, prompts, plain, method, draft, batch_size):
    for r, want in zip(_run(tiny, prompts, method, draft, batch_size), plain, strict=True):
        assert r.token_ids == want.token_ids
        assert [lp.token for lp in r.logprobs] == r.token_ids
        got = [(lp.logprob, *[v for _, v in lp.top]) for lp in r.logprobs]
        ref = [(lp.logprob, *[v for _, v in lp.top]) for lp in want.logprobs]
        assert torch.tensor(got) == pytest.approx(torch.tensor(ref), abs=1e-9)
        assert [[t for t, _ in lp.top] for lp in r.logprobs] == [
            [t for t, _ in lp.top] for lp in want.logprobs
        ]


@pytest.mark.parametrize("method,draft", [("none", None), ("ngram", None), ("draft", "random")])
def test_sampled_logprobs_follow_temperature_and_top_k(tiny, prompts, method, draft):
    results = _run(tiny, prompts, method, draft, 4, temperature=0.7, top_k=2, seed=11)
    warp = Warp.from_params([SamplingParams(temperature=0.7, top_k=2)], torch.device("cpu"))
    for p, r in zip(prompts, results, strict=True):
        want = _direct(tiny["target"].model, p, r.token_ids, warp)  # [n, V]
        for j, lp in enumerate(r.logprobs):
            assert lp.logprob == pytest.approx(want[j, lp.token].item(), abs=1e-9) and lp.logprob > FILTERED
            assert [v for _, v in lp.top][2] == FILTERED  # top_k=2: the third is filtered out
            assert sum(torch.tensor([v for _, v in lp.top[:2]]).exp().tolist()) == pytest.approx(1.0)


def test_logprobs_stop_with_the_tokens(tiny, prompts, plain):
    eos = plain[0].token_ids[3]  # make the 4th generated token a stop
    engine = Engine(tiny["target"].model, tiny["target"].model, eos_token_ids=(eos,), max_batch_size=1)
    (r,) = engine.generate(
        [prompts[0]], SamplingParams(max_new_tokens=12, logprobs=0), SpecParams("draft", 6)
    )
    assert r.finish_reason == "stop" and len(r.token_ids) == len(r.logprobs) <= 4
    assert all(lp.top == [] for lp in r.logprobs)


def test_rows_without_logprobs_carry_none(tiny, prompts):
    engine = Engine(tiny["target"].model, eos_token_ids=tiny["target"].eos_token_ids, max_batch_size=2)
    params = [SamplingParams(max_new_tokens=5), SamplingParams(max_new_tokens=5, logprobs=1)]
    a, b = engine.generate(prompts[:2], params, SpecParams())
    assert a.logprobs == [] and len(b.logprobs) == len(b.token_ids)


def test_logprobs_limit_is_checked():
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=21)
