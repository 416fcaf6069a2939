"""`specserve bench serve` against a live tiny-model server: its token totals equal the server's
counter deltas, its percentiles match a hand computation, it writes JSON / CSV / PNGs, it fails
clearly without a server and it stops by itself."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import socket

import pytest
from live_harness import API_KEY, EngineGate, serving, wait_until

from specserve.bench import loadgen
from specserve.bench.report import percentiles
from specserve.bench.scrape import scrape, total
from specserve.cli.main import main

PNG = b"\x89PNG\r\n\x1a\n"
MAX_TOKENS = 8
PER_LEVEL = 4
PLOTS = [
    "throughput_vs_concurrency.png",
    "throughput_vs_request_rate.png",
    "latency_vs_throughput.png",
    "speedup_vs_concurrency.png",
    "mbu_mfu_vs_batch_size.png",
    "pareto_user_vs_total.png",
]
SLOS = {"ttft": 0.05, "tpot": 0.004, "e2e": 0.2}  # seconds (given in ms on the command line)


@pytest.fixture(scope="module")
def live(tiny_paths):
    with serving(
        tiny_paths, api_key=API_KEY, max_batch_size=8, peak_bandwidth=1e9, peak_flops=1e10
    ) as server:
        yield server


def hand_percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks, written out (numpy's default method)."""
    xs = sorted(values)
    rank = p / 100 * (len(xs) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (rank - lo) * (xs[hi] - xs[lo])


def test_percentiles_match_a_hand_computation():
    xs = [0.3, 0.1, 0.4, 0.1, 0.5, 0.9, 0.2, 0.6, 0.5, 0.3]  # sorted: .1 .1 .2 .3 .3 .4 .5 .5 .6 .9
    d = percentiles(xs)
    assert d.n == 10
    assert d.mean == pytest.approx(0.39)
    assert d.p50 == pytest.approx(0.35)  # rank 4.5: halfway between .3 and .4
    assert d.p90 == pytest.approx(0.63)  # rank 8.1: .6 + 0.1 x (.9 - .6)
    assert d.p99 == pytest.approx(0.873)  # rank 8.91: .6 + 0.91 x (.9 - .6)
    assert percentiles([2.0]).p99 == 2.0
    assert percentiles([]).p50 is None and percentiles([]).n == 0


def test_bench_serve_against_a_live_server(live, tmp_path, capsys):
    out = tmp_path / "serve"
    c = live.http()
    before = scrape(c)
    argv = ["bench", "serve", "--url", live.url, "--api-key", API_KEY, "--methods", "none", "draft",
            "--k", "2", "--mode", "both", "--concurrency", "1", "2", "--request-rates", "50",
            "--num-requests", str(PER_LEVEL), "--max-tokens", str(MAX_TOKENS), "--warmup", "1",
            "--timeout-s", "60", "--out-dir", str(out),
            "--goodput", *(f"{k}:{v * 1000:g}" for k, v in SLOS.items())]  # fmt: skip
    assert main(argv) == 0
    wait_until(lambda: not live.state.engine.has_work(), "the engine to go idle")
    after = scrape(c)
    report = json.loads((out / "serve.json").read_text())
    levels = report["levels"]
    assert [(r["mode"], r["concurrency"] or r["request_rate"], r["method"]) for r in levels] == [
        ("closed", 1, "none"), ("closed", 1, "draft"), ("closed", 2, "none"), ("closed", 2, "draft"),
        ("open", 50.0, "none"), ("open", 50.0, "draft"),
    ]  # fmt: skip

    for r in levels:
        assert (r["completed"], r["failed"], r["errors"]) == (PER_LEVEL, 0, [])
        # ignore_eos: every request runs to max_tokens; the client's count is the server's counter delta
        assert r["output_tokens"] == PER_LEVEL * MAX_TOKENS == r["server_output_tokens"]
        assert sum(q["tokens"] for q in r["requests"]) == r["output_tokens"]
        assert r["output_tokens_per_s"] == pytest.approx(r["output_tokens"] / r["wall_s"])
        stats = [q["server_stats"] for q in r["requests"]]
        assert all(s["completion_tokens"] == MAX_TOKENS and s["method"] == r["method"] for s in stats)
        # counter deltas of the level agree with the sums of its requests' own stats
        server = r["server"]
        assert server["accepted_tokens"] == sum(s["accepted_tokens"] for s in stats)
        assert server["draft_tokens"] == sum(s["draft_tokens"] for s in stats)
        assert server["requests"] == PER_LEVEL
        assert server["bytes_read"] == pytest.approx(sum(s["bytes_read"] for s in stats))
        assert r["mbu"] == pytest.approx(server["bytes_read"] / r["wall_s"] / 1e9)
        assert r["mfu"] == pytest.approx(server["flops"] / r["wall_s"] / 1e10)
        assert r["mbu"] > 0 and r["mfu"] > 0 and r["mean_batch_size"] >= 1
        if r["method"] == "draft":
            assert server["draft_tokens"] > 0
            assert r["acceptance_rate"] == pytest.approx(server["accepted_tokens"] / server["draft_tokens"])
            assert r["mean_accepted_length"] == pytest.approx(
                1 + server["accepted_tokens"] / server["drafts"]
            )
        else:
            assert r["acceptance_rate"] is None and server["draft_tokens"] == 0
        if r["mode"] == "closed" and r["concurrency"] == 1:
            assert r["mean_batch_size"] == 1.0
        # the reported percentiles are those of the recorded samples, computed by hand
        ok = [q for q in r["requests"] if q["ok"]]
        samples = {
            "e2e_s": [q["e2e_s"] for q in ok],
            "ttft_s": [q["ttft_s"] for q in ok],
            "itl_s": [g for q in ok for g in q["itl_s"]],
            "tpot_s": [(q["e2e_s"] - q["ttft_s"]) / (q["tokens"] - 1) for q in ok],
        }
        for name, xs in samples.items():
            assert r[name]["n"] == len(xs) and r[name]["mean"] == pytest.approx(sum(xs) / len(xs))
            for p in (50, 90, 99):
                assert r[name][f"p{p}"] == pytest.approx(hand_percentile(xs, p)), (name, p)
        # goodput and per-user speed, by hand from the same samples
        met = [q["ttft_s"] <= SLOS["ttft"] and t <= SLOS["tpot"] and q["e2e_s"] <= SLOS["e2e"]
               for q, t in zip(ok, samples["tpot_s"], strict=True)]  # fmt: skip
        assert r["slo_met"] == sum(met)
        assert r["goodput_requests_per_s"] == pytest.approx(sum(met) / r["wall_s"])
        assert r["tokens_per_s_per_user"] == pytest.approx(sum(1 / t for t in samples["tpot_s"]) / len(ok))

    # overall: every token the tool saw (warm-up included) is the server's counter delta, and no more
    warmup = 2 * MAX_TOKENS
    delta = total(after, "specserve_generation_tokens_total") - total(
        before, "specserve_generation_tokens_total"
    )
    assert delta == sum(r["output_tokens"] for r in levels) + warmup

    rows = list(csv.DictReader((out / "serve.csv").open()))
    assert len(rows) == len(levels)
    for row, r in zip(rows, levels, strict=True):
        assert row["method"] == r["method"] and int(row["output_tokens"]) == r["output_tokens"]
        assert float(row["e2e_p99_s"]) == pytest.approx(r["e2e_s"]["p99"])
        assert float(row["server_generation_tokens"]) == r["server_output_tokens"]
    wanted = {"ttft_p50_s", "tpot_p90_s", "itl_p99_s", "acceptance_rate", "mbu", "mfu", "slo_met",
              "goodput_requests_per_s", "tokens_per_s_per_user"}  # fmt: skip
    assert wanted <= set(rows[0])
    assert report["config"]["max_tokens"] == MAX_TOKENS and report["server"]["methods"]
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, name
    table = capsys.readouterr().out
    assert "tok/s" in table and "goodput" in table and "tok/s/user" in table


def test_unreachable_server_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(SystemExit) as e:
        main(["bench", "serve", "--url", url, "--out-dir", str(tmp_path)])
    assert str(e.value).startswith(f"error: the server at {url} is not reachable")
    assert not any(tmp_path.iterdir())


def test_a_method_the_server_lacks_is_a_clear_error(live, tmp_path):
    with pytest.raises(SystemExit, match="does not offer medusa"):
        main(["bench", "serve", "--url", live.url, "--api-key", API_KEY, "--methods", "medusa",
              "--out-dir", str(tmp_path)])  # fmt: skip


def test_levels_stop_by_themselves(live):
    """A held engine: the level cancels what is in flight at --timeout-s and counts it as failed."""
    wait_until(lambda: not live.state.engine.has_work(), "the engine to go idle")
    gate = EngineGate(live.state)
    live.state.engine.step = gate.step  # type: ignore[method-assign]
    try:
        cfg = loadgen.LoadConfig(live.url, MAX_TOKENS, timeout_s=0.5, api_key=API_KEY)
        run = asyncio.run(loadgen.closed_loop(cfg, ["def f():"], "none", 2, 10))
        assert run.timed_out and run.sent == 2 and run.wall_s < 5
        assert all(not s.ok and s.error.startswith("unfinished at --timeout-s") for s in run.samples)
    finally:
        gate.open()
        del live.state.engine.step
    wait_until(lambda: not live.state.engine.has_work(), "the aborted requests to drain")

    # open loop: nothing is sent after --duration-s
    cfg = loadgen.LoadConfig(live.url, 2, timeout_s=30, duration_s=0.5, api_key=API_KEY, seed=3)
    arrivals = loadgen.poisson_arrivals(4.0, 50, seed=3)
    run = asyncio.run(loadgen.open_loop(cfg, ["def f():"], "none", 4.0, 50))
    assert run.sent == sum(a < 0.5 for a in arrivals) < 50 and all(s.ok for s in run.samples)
    assert loadgen.poisson_arrivals(float("inf"), 3, seed=0) == [0.0, 0.0, 0.0]


def test_jsonl_prompts_and_the_inprocess_baseline(live, tiny_paths, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "def f(x):"}\n\n{"prompt": "class A:", "id": "b"}\n')
    out = tmp_path / "serve"
    argv = ["bench", "serve", "--url", live.url, "--api-key", API_KEY, "--concurrency", "1",
            "--num-requests", "2", "--max-tokens", "4", "--warmup", "0", "--no-plots", "--inprocess",
            "--prompts", str(prompts), "--target", tiny_paths["target"], "--dtype", "float64",
            "--out-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "serve.json").read_text())
    assert [q["server_stats"]["prompt_tokens"] for q in report["levels"][0]["requests"]] == [
        len(live.state.target.tokenizer.encode(p)) for p in ("def f(x):", "class A:")
    ]
    base = report["inprocess"]["none"]
    assert base["output_tokens_per_s"] > 0 and base["http_vs_inprocess_tokens_per_s"] > 0
    assert "in-process none" in capsys.readouterr().out
    assert not list(out.glob("*.png"))


def test_method_variants_carry_their_own_k():
    import argparse

    from specserve.cli.argtypes import _variant

    cfg = loadgen.LoadConfig(url="http://127.0.0.1:1", max_tokens=4, timeout_s=1)
    assert loadgen.request_body("x", "draft:auto", cfg)["num_speculative_tokens"] == "auto"
    assert loadgen.request_body("x", "ngram:3", cfg)["num_speculative_tokens"] == 3
    assert "num_speculative_tokens" not in loadgen.request_body("x", "medusa", cfg)
    assert loadgen.request_body("x", "draft:2", cfg)["method"] == "draft"
    for bad in ("beam", "draft:0", "draft:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _variant(bad)


def test_requests_per_level_scale_with_clients():
    from specserve.bench.serve import levels_of
    from specserve.cli.main import build_parser

    def parse(*flags: str):
        return build_parser().parse_args(["bench", "serve", *flags])

    args = parse("--concurrency", "1", "32", "--mode", "both", "--request-rates", "2")
    assert levels_of(args) == [("closed", 1, 8), ("closed", 32, 128), ("open", 2.0, 8)]
    args = parse("--concurrency", "1", "32", "--requests-per-client", "16")
    assert levels_of(args) == [("closed", 1, 16), ("closed", 32, 512)]
    args = parse("--concurrency", "4", "--num-requests", "5")
    assert levels_of(args) == [("closed", 4, 5)]


def test_output_lengths_spread_the_same_way_for_every_method():
    cfg = loadgen.LoadConfig(url="http://127.0.0.1:1", max_tokens=64, timeout_s=1, range_ratio=0.5, seed=3)
    a = loadgen.output_lengths(cfg, 2000)
    assert a == loadgen.output_lengths(cfg, 2000)  # seeded: each method gets the same workload
    assert min(a) == 32 and max(a) == 96 and abs(sum(a) / len(a) - 64) < 2
    flat = loadgen.LoadConfig(url="http://127.0.0.1:1", max_tokens=64, timeout_s=1)
    assert loadgen.output_lengths(flat, 3) == [64, 64, 64]
    assert loadgen.request_body("x", "none", cfg, 40)["max_tokens"] == 40


def _run_none_and_ngram(live, out, *args: str) -> None:
    """A short sweep of none and ngram, no warm-up and no plots, into `out`."""
    argv = ["bench", "serve", "--url", live.url, "--api-key", API_KEY, "--methods", "none", "ngram",
            *args, "--warmup", "0", "--no-plots", "--out-dir", str(out)]  # fmt: skip
    assert main(argv) == 0


def test_varied_output_lengths_against_a_live_server(live, tmp_path):
    out = tmp_path / "serve"
    _run_none_and_ngram(live, out, "--concurrency", "2", "--num-requests", "6", "--max-tokens", "8",
                        "--random-range-ratio", "0.5")  # fmt: skip
    cfg = loadgen.LoadConfig(url=live.url, max_tokens=8, timeout_s=1, range_ratio=0.5)
    want = loadgen.output_lengths(cfg, 6)
    assert len(set(want)) > 1
    for r in json.loads((out / "serve.json").read_text())["levels"]:
        assert [q["tokens"] for q in r["requests"]] == want  # ignore_eos: each runs to its own length
        assert r["output_tokens"] == sum(want) == r["server_output_tokens"]


def test_median_run_is_one_real_run_with_every_repeat_attached():
    from dataclasses import fields

    from specserve.bench.report import LevelResult, median_run

    def run(tok_s: float) -> LevelResult:
        r = LevelResult(**{f.name: None for f in fields(LevelResult) if f.name not in ("errors", "requests")})
        r.output_tokens_per_s = tok_s
        return r

    three = [run(x) for x in (30.0, 10.0, 20.0)]
    assert median_run(three) is three[2] and three[2].runs_output_tokens_per_s == [30.0, 10.0, 20.0]
    two = [run(x) for x in (5.0, 4.0)]
    assert median_run(two) is two[1]  # the lower of an even count: never flatter than a real run


def test_repeats_interleave_methods_against_a_live_server(live, tmp_path):
    out = tmp_path / "serve"
    _run_none_and_ngram(live, out, "--concurrency", "1", "--num-requests", "2", "--max-tokens", "4",
                        "--repeats", "3")  # fmt: skip
    levels = json.loads((out / "serve.json").read_text())["levels"]
    assert [r["method"] for r in levels] == ["none", "ngram"]
    for r in levels:
        runs = r["runs_output_tokens_per_s"]
        assert len(runs) == 3 and r["output_tokens_per_s"] == sorted(runs)[1]
        assert r["output_tokens"] == 2 * 4 == r["server_output_tokens"]  # the chosen run's own delta
    with (out / "serve.csv").open() as f:
        assert all(len(row["runs_output_tokens_per_s"].split()) == 3 for row in csv.DictReader(f))


def test_repeats_rotate_which_method_runs_first(monkeypatch):
    import argparse

    from specserve.bench import serve

    calls = []
    monkeypatch.setattr(serve, "run_level", lambda cfg, http, prompts, lv, m, bar: calls.append(m) or m)
    monkeypatch.setattr(serve.report, "median_run", lambda runs: runs)
    args = argparse.Namespace(methods=["none", "draft", "ngram"], repeats=3, warmup_levels=False)
    got = serve.run_repeats(None, None, [], ("closed", 1, 1), args, None)
    assert calls == ["none", "draft", "ngram", "draft", "ngram", "none", "ngram", "none", "draft"]
    assert got == [["none"] * 3, ["draft"] * 3, ["ngram"] * 3]


def test_goodput_counts_requests_meeting_every_slo():
    from specserve.bench.loadgen import Sample
    from specserve.bench.report import meets

    fast = Sample("none", ok=True, ttft_s=0.1, e2e_s=0.5, tokens=5)  # TPOT 0.1
    slow_start = Sample("none", ok=True, ttft_s=0.6, e2e_s=1.0, tokens=5)
    one_token = Sample("none", ok=True, ttft_s=0.1, e2e_s=0.1, tokens=1)  # no TPOT to miss
    slos = {"ttft": 0.5, "tpot": 0.1}
    assert [meets(s, slos) for s in (fast, slow_start, one_token)] == [True, False, True]
    assert not meets(fast, {"tpot": 0.09}) and meets(fast, {"e2e": 0.5}) and not meets(fast, {"e2e": 0.49})


@pytest.mark.parametrize("bad", ["ttft", "ttft:0", "itl:5", "tpot:x", "e2e:-1", "ttft:inf"])
def test_goodput_flag_rejects_what_it_cannot_read(bad, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "serve", "--goodput", bad])
    assert "SLO" in capsys.readouterr().err


def test_warmup_levels_run_each_level_once_unmeasured(live, tmp_path):
    """--warmup-levels: every method runs each level once before its repeats, and none of it is
    reported; the same requests (greedy here), so the server generated twice what was measured."""
    out, c = tmp_path / "serve", live.http()
    before = scrape(c)
    argv = ["bench", "serve", "--url", live.url, "--api-key", API_KEY, "--methods", "none",
            "--concurrency", "1", "--num-requests", "2", "--max-tokens", str(MAX_TOKENS), "--warmup", "0",
            "--warmup-levels", "--no-plots", "--out-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    wait_until(lambda: not live.state.engine.has_work(), "the engine to go idle")
    levels = json.loads((out / "serve.json").read_text())["levels"]
    assert len(levels) == 1 and levels[0]["completed"] == 2
    delta = total(scrape(c), "specserve_generation_tokens_total") - total(
        before, "specserve_generation_tokens_total"
    )
    assert delta == 2 * levels[0]["output_tokens"]


def test_bench_serve_waits_for_the_servers_idle_time_warm_up(caplog):
    """/health's warm_up_tasks_left: polled until 0 (a server without the field: no wait), at most
    the timeout, then measured anyway with a warning."""
    import httpx

    from specserve.bench.serve import wait_for_warm_up

    left = [3, 2, 2, 0]
    polls = []

    def health(request: httpx.Request) -> httpx.Response:
        polls.append(request.url.path)
        return httpx.Response(200, json={"status": "ok", "warm_up_tasks_left": left.pop(0) if left else 5})

    with httpx.Client(base_url="http://server", transport=httpx.MockTransport(health)) as http:
        wait_for_warm_up(http, timeout_s=10, poll_s=0.01)
        assert polls == ["/health"] * 4 and not left
        caplog.set_level(logging.WARNING)
        wait_for_warm_up(http, timeout_s=0.05, poll_s=0.01)  # 5 left for good
        assert "did not end in 0 s; measuring anyway" in caplog.text
    other = httpx.MockTransport(lambda request: httpx.Response(200, json={"status": "ok"}))
    with httpx.Client(base_url="http://server", transport=other) as http:
        wait_for_warm_up(http, timeout_s=10, poll_s=10)  # returns at once
