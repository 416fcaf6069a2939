"""Step cost as adaptive speculation measures it (decoding/step_cost.py)."""

from __future__ import annotations

import pytest

from specserve.decoding.adaptive import KController, bucket
from specserve.decoding.averages import Average
from specserve.decoding.stats import StepStats
from specserve.decoding.step_cost import StepCosts


def test_cost_spikes_are_clipped():
    ctl = KController(k_max=2)
    for seconds in (0.010, 0.010, 0.010, 0.500, 0.010):
        ctl.observe(StepStats("ngram", "decode", 8, k=0, verify_s=seconds))
    assert ctl.step_cost(bucket(8), 0) < 0.012


def test_a_k_timed_once_does_not_tilt_the_cost_line():
    """At batch 1 prompt lookup ran K = 1 hundreds of times and K = 4 once, on a slow step (17 ms
    against ~8): weighed evenly that one sample made every K > 2 look dear, and K = 1 stayed."""
    costs = StepCosts()
    costs.table = {
        (1, 0): Average(0.0058, n=300),
        (1, 1): Average(0.0080, n=800),
        (1, 2): Average(0.0085, n=30),
    }
    costs.table[(1, 4)] = Average(0.017, n=1)
    assert costs(1, 4) < 0.0100  # the line through K = 1, 2 (9.0 ms), barely moved
    costs.table[(1, 4)] = Average(0.017, n=30)  # measured as often: it counts as much
    assert costs(1, 4) > 0.0150


def test_one_k_measured_slopes_from_the_plain_step_and_overhead_counts_for_every_k():
    costs = StepCosts(overhead=0.001)
    assert costs(1, 0) is None and costs(1, 3) is None and costs.line(1) is None
    costs.add(1, 0, 0.010)
    costs.add(1, 2, 0.014)
    assert costs.steps(1, False) == 1 and costs.steps(1, True) == 1
    assert costs(1, 0) == pytest.approx(0.011)
    assert costs.upto(1, 4) == pytest.approx([0.011, 0.013, 0.015, 0.017, 0.019])  # 2 ms a candidate
