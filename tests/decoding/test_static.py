"""A compiled step's view of the cache: its graph's shapes do not follow every new column."""

from __future__ import annotations

import copy

import pytest

from specserve.decoding.cache import MIN_CAPACITY
from specserve.decoding.compiled import CompiledForward
from specserve.decoding.kv import KVState
from specserve.decoding.static import SPAN_STEP


@pytest.mark.parametrize("rows", [1, 2])
def test_a_growing_cache_compiles_no_graph_after_the_first_ones(tiny, rows):
    """Rows fed a token at a time past several span steps and two capacity doublings run on the
    graph their first step compiled: a recompile mid-serving stalls every request for seconds.
    (The span of columns attended once reached the buffers' whole capacity: a contiguous view,
    which dynamo guards, so a second graph compiled where the two parted.)"""
    model = copy.deepcopy(tiny["target"].model)  # (its own graphs: dynamo keeps them per model here)
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
