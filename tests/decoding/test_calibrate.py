"""Step costs for the K policy: real decode steps on scratch rows, every K offered in full."""

from __future__ import annotations

import pytest

from specserve.decoding import Engine
from specserve.decoding.calibrate import EXTRA, REPS, time_steps


@pytest.mark.parametrize("method", ["draft", "ngram"])
def test_scratch_rows_offer_every_candidate_at_every_k(tiny, method):
    t, d = tiny["target"].model, tiny["draft"].model
    engine = Engine(t, d)
    batch = engine.new_batch(method, scratch=True)
    planned: list[int] = []
    costs = time_steps(t, batch, 2, 3, plan=planned.append)
    assert len(costs) == 4 and all(c > 0 for c in costs)
    assert planned == [0, 1, 2, 3] * (REPS + 1)  # the Ks interleave, one unmeasured pass first
    full = (REPS + 1) * (0 + 1 + 2 + 3)  # every K offered in full (lookup's misses filled)
    assert [r.stats.draft_tokens for r in batch.rows] == [full, full]
    assert engine.num_running == 0 and not engine.batches  # the engine never saw the rows


def test_a_step_that_compiled_a_graph_is_timed_again(tiny):
    t = tiny["target"].model
    engine = Engine(t)
    counter = iter(range(0, 10**6, 1))
    compiled_every_step = lambda: next(counter)  # noqa: E731  (every call: one more graph)
    planned: list[int] = []
    costs = time_steps(t, engine.new_batch("ngram", scratch=True), 1, 1, planned.append, compiled_every_step)
    assert planned == [0, 1] * (REPS + 1 + EXTRA)  # REPS + 1 passes, then EXTRA more for both Ks
    assert all(0 < c < float("inf") for c in costs)  # the last extra pass is kept whatever happened
