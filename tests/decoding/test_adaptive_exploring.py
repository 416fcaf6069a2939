"""Adaptive K's measurements over time: what a trial really costs, stale averages, and steps
whose timing is not the steady one (decoding/adaptive.py)."""

from __future__ import annotations

from scripted import spec_step

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.adaptive import KController
from specserve.decoding.stats import StepStats


def test_exploring_costs_its_budget_however_dear_the_catch_up():
    """A trial after plain steps makes the draft read every token it missed: at batch 8 after a
    long plain run that is several plain steps' worth, while the catch-ups seen at batch 1 (rows
    joining as it speculates, prompts its prefix cache held) are cheap. The bank pays a
    prediction but is debited what each trial really cost, so plain decoding at batch 8 gives up
    little more than `regret` of its throughput to exploring, and still explores."""
    ctl, lag, trials, prev = KController(k_max=2), 0, 0, 0
    seconds = tokens = 0.0  # at batch 8
    for i in range(8000):
        B = 1 if (i // 400) % 2 == 0 else 8
        k = ctl.choose(B)
        verify = 0.010 if B == 1 else 0.010 * (1 + k)  # batch 1 is memory-bound, batch 8 is not
        if B == 1:
            sync = 0.001 if k and i % 4 == 0 else 0.0  # a row joined: its prompt was cached
        else:
            sync = 0.001 * lag if k and not prev else 0.0  # every token missed since the last trial
            trials += bool(k and not prev)
        lag, prev = (0 if k else lag + 1), k
        stats = StepStats("draft", "decode", B, k=k, propose_s=0.001 * k + sync, verify_s=verify, sync_s=sync)
        stats.drafted_per_position = [B] * k
        stats.reached_per_position = [B, B / 2][:k]
        stats.accepted_per_position = [B / 2, B / 4][:k]  # 0.5 each: wins at batch 1 only
        stats.emitted_tokens = B * (1 + (0.5, 0.75)[k - 1]) if k else B
        ctl.observe(stats)
        if B == 8:
            seconds, tokens = seconds + stats.propose_s + verify, tokens + stats.emitted_tokens / B
    assert trials >= 2
    assert tokens / seconds >= 0.97 * 100  # plain alone: 1 token per row each 10 ms


def test_an_outcome_after_a_plain_run_weighs_more():
    """At batch 1 the acceptance is the current request's, and what was measured before a run of
    plain steps may be another request's: a trial's outcome after that run weighs up to
    `max_weight`, while back to back, one row's outcome weighs `alpha`."""

    def step(accepted: int) -> float:
        before = ctl.accept[0]
        ctl.choose(1)
        ctl.observe(spec_step(2, accepted=accepted))
        return ctl.accept[0] - before

    ctl = KController(k_max=2)
    for _ in range(200):
        step(accepted=0)  # a request the draft cannot guess
    back_to_back = step(accepted=2)
    for _ in range(100):  # plain steps: nothing measures acceptance
        ctl.choose(1)
        ctl.observe(StepStats("draft", "decode", 1, k=0, verify_s=0.006))
    after_plain = step(accepted=2)
    assert back_to_back < 0.03 and 0.15 < after_plain <= ctl.max_weight


def test_steps_on_settings_under_trial_do_not_price_k(tiny):
    """A thread tuner times each new kind of step (method, K, batch size) on every candidate
    thread count, some of them slower: at batch 1 two threads made a K = 3 verify 40% dearer per
    token. Priced from those steps, a K used rarely afterwards kept the dearer cost, and the fitted
    line favoured deeper K. The engine marks such steps, and the controller takes no cost from them."""
    t, d = tiny["target"].model, tiny["draft"].model
    prompts = [[5, 6, 7, 5, 6, 7, 5], [9, 10, 11]]
    sampling = SamplingParams(max_new_tokens=16)
    plain = Engine(t).generate(prompts, sampling, SpecParams())
    for trying in (True, False):
        engine = Engine(t, d, max_batch_size=2)
        engine.on_plan = lambda phase, method, k, rows, trying=trying: trying
        res = engine.generate(prompts, sampling, SpecParams("draft", 4, adaptive=True))
        assert [r.token_ids for r in res] == [r.token_ids for r in plain]
        ctl = engine.controllers["draft"]
        assert bool(ctl.costs.table) is not trying and bool(ctl.realized) is not trying


def test_a_plain_steps_rate_does_not_go_stale():
    """While speculating, plain steps come only as rechecks, one in dozens: one that the OS
    preempted must not move the plain rate as news would (it does not depend on the request)."""
    ctl = KController(k_max=2)
    for _ in range(50):
        ctl.choose(1)
        ctl.observe(StepStats("draft", "decode", 1, k=0, verify_s=0.006, emitted_tokens=1))
    for _ in range(100):  # a run of speculation
        ctl.choose(1)
        ctl.observe(spec_step(2, accepted=2))
    before = ctl.realized[(1, False)].value
    ctl.choose(1)
    ctl.observe(StepStats("draft", "decode", 1, k=0, verify_s=0.012, emitted_tokens=1))  # preempted
    assert ctl.realized[(1, False)].value > 0.95 * before


def test_a_request_alone_starts_from_the_acceptance_across_requests():
    """At batch 1 the acceptance is the current request's, and the next request's may differ
    wholly. After a bad request the estimates said "plain", and the next request ran plain too
    (in-process, draft:auto reached 84-90% of draft:4 at batch 1). A new request alone in its
    batch starts from the average across requests, then its own outcomes take over quickly."""
    ctl = KController(k_max=4)

    def run(request: str, accept: bool, steps: int) -> list[int]:
        ks = []
        for _ in range(steps):
            ks.append(k := ctl.choose(1, None, request))
            if k:  # a speculative step costs two plain ones: it pays from ~0.5 acceptance
                ctl.observe(spec_step(k, k if accept else 0, seconds=0.020))
            else:
                ctl.observe(StepStats("draft", "decode", 1, k=0, verify_s=0.010, emitted_tokens=1))
        return ks

    for i in range(4):
        assert sum(k > 0 for k in run(f"good{i}", True, 40)) >= 30  # plain: the baseline, rechecks
    assert run("bad", False, 200)[-10:] == [0] * 10  # it learned this one's "no"
    assert run("next", True, 1) != [0]  # the old code: 0, and plain until a trial (~1 per request)
    assert run("bad again", False, 12)[-3:] == [0] * 3  # a bad one's own outcomes soon say no


def test_the_engine_names_the_request_alone_in_its_batch(tiny):
    engine = Engine(tiny["target"].model, tiny["draft"].model, max_batch_size=2)
    spec = SpecParams("draft", 3, adaptive=True)
    engine.generate([[5, 6, 7]], SamplingParams(max_new_tokens=6), spec)
    first = engine.controllers["draft"].request
    engine.generate([[8, 9]], SamplingParams(max_new_tokens=6), spec)
    ctl = engine.controllers["draft"]
    assert first is not None and ctl.request not in (None, first)
    assert len(ctl.prior.accept) == 3  # the first request's estimates were folded in
