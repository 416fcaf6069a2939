"""A compiled step's view of the cache: its graph's shapes do not follow every new column."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from specserve.decoding.cache import MIN_CAPACITY, layers
from specserve.decoding.compiled import CompiledForward
from specserve.decoding.kv import KVState
from specserve.decoding.static import SPAN_STEP


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("which", ["tiny", "mha_float32"])
def test_a_growing_cache_compiles_no_graph_after_the_first_ones(request, which, rows):
    """Rows fed a token at a time past several span steps and two capacity doublings run on the
    graph their first step compiled: a recompile mid-serving stalls every request for seconds.
    (The span of columns attended once reached the buffers' whole capacity: a contiguous view,
    which dynamo guards, so a second graph compiled where the two parted. And a first span of
    SPAN_STEP columns shared dynamo's symbol with a head size as large, and was specialized.)"""
    loaded = request.getfixturevalue(which)
    model = copy.deepcopy(loaded["target"].model if which == "tiny" else loaded)  # (its own graphs)
    compiled = CompiledForward(model, "target")
    kv = KVState.empty(model, rows, compiled=compiled)
    kv.forward(model, [[5, 6, 7]] * rows, logits="last")
    counts = []
    for step in range(4 * SPAN_STEP):
        kv.forward(model, [[11 + step % 50]] * rows)
        counts.append(compiled.compiles)
    assert kv.num_columns > 3 * SPAN_STEP > MIN_CAPACITY
    late = [(step, n) for step, n in enumerate(counts) if n != counts[0]]
    assert not late, f"graphs compiled at (step, graphs so far): {late}"


def test_a_compiled_step_of_several_rows_writes_only_its_new_columns(mha_float32):
    """The graph for several rows (their count symbolic) writes each step's keys and values into
    the cache buffers in place, with no kernel that runs over rows x the cache's columns. Written
    into a view of the buffers' first B rows (the batch's; the buffers keep spare rows for joins),
    the write became a copy of those rows' every column out and back, each layer, each step: 2-4
    rows ran 40-60% slower past 128 columns on the bundled suite."""
    model = mha_float32
    compiled = CompiledForward(model, "target")
    kv = KVState.empty(model, 2, compiled=compiled)
    kv.forward(model, [[5, 6, 7] * 10] * 2, logits="last")  # (eager: a prefill)
    for layer in layers(kv.cache):
        layer.reserve(5, 1)  # spare rows, as a batch that rows joined has
    with torch.no_grad():
        _, code = run_and_get_code(lambda: [kv.forward(model, [[20 + i % 9]] * 2) for i in range(3)])
    loops = [line.strip() for c in code for line in c.splitlines() if "for(" in line]
    assert compiled.calls == 3 and loops, "the steps ran compiled"
    over_rows_and_columns = [line for line in loops if re.search(r"ks\d+\*ks\d+", line)]
    assert not over_rows_and_columns


def test_a_lone_row_in_a_batchs_buffers_runs_on_the_one_row_graph(tiny):
    """A request alone from the start and one left alone in a batch's larger buffers (rows kept
    for joins) run on the same one-row graph: the buffers never hold fewer than MIN_ROWS rows, so
    their row count is never traced as 1. (It was, at the warm-up's lone request, and the first
    batch to shrink to one row compiled a graph of its own mid-serving, seconds on the engine
    thread.)"""
    model = copy.deepcopy(tiny["target"].model)
    compiled = CompiledForward(model, "target")
    counts = []
    for spare in (0, 7):
        kv = KVState.empty(model, 1, compiled=compiled)
        kv.forward(model, [[5, 6, 7] * 10], logits="last")
        for layer in layers(kv.cache):
            layer.reserve(1 + spare, 1)  # (a batch's buffers: rows to spare)
        for step in range(3):
            kv.forward(model, [[11 + step]])
            counts.append(compiled.compiles)
    assert layers(kv.cache)[0].capacity[0] >= 8 and counts[0] >= 1
    assert counts == [counts[0]] * len(counts), f"graphs compiled so far, step by step: {counts}"
