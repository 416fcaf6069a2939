"""The load generator's workloads and the report's paired ratios with confidence intervals."""

from __future__ import annotations

import math

import pytest

from specserve.bench import loadgen, report
from specserve.bench.prompts import CODE_PROMPTS, OTHER_PROMPTS, mixed_prompts


def test_realistic_workload_ends_at_eos_and_samples_every_third_request_with_a_seed():
    cfg = loadgen.LoadConfig(url="http://127.0.0.1:1", max_tokens=128, timeout_s=1, seed=2)
    bodies = [loadgen.request_body("x", "draft:auto", cfg, index=i) for i in range(6)]
    assert not any(b["ignore_eos"] for b in bodies)
    sampled = [i for i, b in enumerate(bodies) if "temperature" in b]
    assert sampled == [2, 5]
    assert bodies[2]["temperature"] == 0.7 and bodies[2]["seed"] != bodies[5]["seed"]
    again = loadgen.request_body("x", "none", cfg, index=5)  # every method gets the same request
    assert (again["temperature"], again["seed"]) == (bodies[5]["temperature"], bodies[5]["seed"])


def test_equal_workload_runs_every_output_to_max_tokens_greedily():
    cfg = loadgen.LoadConfig(url="http://127.0.0.1:1", max_tokens=64, timeout_s=1, workload="equal")
    bodies = [loadgen.request_body("x", "none", cfg, index=i) for i in range(6)]
    assert all(b["ignore_eos"] and "temperature" not in b for b in bodies)


def test_mixed_prompts_alternate_code_and_other_text():
    mixed = mixed_prompts()
    assert mixed[0::2] == CODE_PROMPTS and mixed[1::2] == OTHER_PROMPTS


def test_paired_ratio_is_the_geometric_mean_with_a_t_interval():
    a, b = [110.0, 120.0, 100.0], [100.0, 100.0, 100.0]
    ci = report.paired_ratio(a, b)
    logs = [math.log(1.1), math.log(1.2), 0.0]
    mean = sum(logs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2)
    assert ci["ratio"] == pytest.approx(math.exp(mean))
    assert ci["lo"] == pytest.approx(math.exp(mean - 4.30 * sd / math.sqrt(3)))
    assert ci["hi"] == pytest.approx(math.exp(mean + 4.30 * sd / math.sqrt(3)))
    assert report.paired_ratio([1.0], [2.0]) is None  # one pair: no interval


def test_ratios_pair_each_method_with_none_at_the_same_level():
    def level(method, load, runs):
        r = report.LevelResult.__new__(report.LevelResult)
        r.mode, r.method, r.concurrency, r.runs_output_tokens_per_s = "closed", method, load, runs
        return r

    rows = report.ratios(
        [level("none", 1, [100, 100]), level("ngram", 1, [150, 130]), level("ngram", 2, [1, 1])]
    )
    assert len(rows) == 1 and rows[0]["method"] == "ngram" and rows[0]["load"] == "c=1"
    assert rows[0]["ratio"] == pytest.approx(math.sqrt(1.5 * 1.3))
