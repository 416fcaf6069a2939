"""Accounting formulas against hand computation on the tiny model, and their consistency."""

from __future__ import annotations

import pytest
import torch

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.stats import Forward, StepStats
from specserve.metrics.accounting import Accountant, ModelCost, build_accountant
from specserve.metrics.peaks import Peaks, device_peaks


def test_model_cost_by_hand(tiny):
    t = tiny["target"]  # 2 layers, hidden 64, 4 heads (head size 16), 2 KV heads, float64
    cost = ModelCost.for_model("target", t.model, t.weight_bytes, t.non_embedding_params)
    assert cost.kv_bytes_per_token == 2 * 2 * 2 * 16 * 8  # K and V x layers x KV heads x head size x 8 bytes
    assert cost.attn_flops_per_token_column == 4 * 2 * 4 * 16
    weights, kv, flops = cost.row_costs(Forward("target", [1, 3], columns=10))
    assert weights == [t.weight_bytes / 2] * 2
    assert kv == [10 * 1024.0] * 2
    P = t.non_embedding_params
    assert flops == [2 * P * 1 + 512 * 1 * (10 + 1), 2 * P * 3 + 512 * 3 * (10 + 2)]
    weights, kv, flops = cost.row_costs(Forward("target", [0, 4, 2], columns=10))  # row 0 fed nothing
    assert weights == [0.0, t.weight_bytes / 2, t.weight_bytes / 2] and kv[0] == 0.0 and flops[0] == 0.0


def test_accountant_charges_rows_and_totals_steps(tiny):
    acct = build_accountant(tiny["target"], tiny["draft"], peaks=Peaks(1e9, 1e10, "flag"))
    steps: list[StepStats] = []
    engine = Engine(tiny["target"].model, tiny["draft"].model, max_batch_size=4, charge=acct,
                    on_step=steps.append)  # fmt: skip
    res = engine.generate(
        [[5, 6, 7], [8, 9, 10, 11, 12]], SamplingParams(max_new_tokens=10), SpecParams("draft", 3)
    )
    total_steps = sum(sum(k.values()) for s in steps for k in s.bytes_read.values())
    # weights are read once per forward and split over its rows: the rows' shares add up exactly
    assert sum(r.stats.bytes_read for r in res) == pytest.approx(total_steps)
    assert sum(r.stats.flops for r in res) == pytest.approx(sum(sum(s.flops.values()) for s in steps))
    assert {m for s in steps for m in s.bytes_read} == {"target", "draft"}
    st = res[0].stats
    assert st.bandwidth_bytes_per_s == pytest.approx(st.bytes_read / (st.e2e_s - st.queue_time_s))
    assert st.mbu == pytest.approx(st.bandwidth_bytes_per_s / 1e9)
    assert st.mfu == pytest.approx(st.flops / st.busy_s / 1e10)
    d = st.to_dict()
    assert {"bytes_read", "bandwidth_bytes_per_s", "mbu", "mfu"} <= d.keys()


def test_peaks_flags_table_and_probe():
    assert device_peaks(torch.device("cpu"), torch.float32, 1e9, 2e9) == Peaks(1e9, 2e9, "flag")
    probed = device_peaks(torch.device("cpu"), torch.float32)
    assert probed.source == "probe" and probed.bytes_per_s > 0 and probed.flops_per_s > 0
    half = device_peaks(torch.device("cpu"), torch.float32, bandwidth=5e9)
    assert half.bytes_per_s == 5e9 and half.source == "flag + probe"


def test_unknown_models_are_not_charged():
    acct = Accountant({}, 0.0, 0.0)
    stats = StepStats("none", "decode", 1, forwards=[Forward("target", [1], 4)])
    acct(stats, [])
    assert stats.bytes_read == {} and stats.flops == {}
