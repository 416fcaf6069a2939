"""A step's lockstep drops reach Prometheus, and the load tool counts only kept candidates."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from specserve.bench.scrape import P, server_delta
from specserve.decoding.stats import StepStats
from specserve.metrics.prometheus import ServerMetrics


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_dropped_tokens_count_beside_the_accepted_ones():
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    s = StepStats("draft", "decode", 3, k=2, draft_tokens=6, accepted_tokens=5, dropped_tokens=2)
    s.drafted_per_position, s.accepted_per_position = [3, 3], [3, 2]
    metrics.on_step(s)
    metrics.on_step(StepStats("ngram", "decode", 2, k=1, draft_tokens=2, accepted_tokens=1))
    name = P + "spec_decode_num_lockstep_dropped_tokens_total"
    assert _value(registry, name, method="draft") == 2
    assert _value(registry, name, method="ngram") is None  # no candidates proposed: no series yet
    assert _value(registry, P + "spec_decode_num_accepted_tokens_total", method="draft") == 5


def test_mean_accepted_length_counts_only_the_candidates_kept():
    def snap(accepted: float, dropped: float, drafts: float) -> dict:
        m = frozenset({("method", "draft")})
        return {
            (P + "spec_decode_num_accepted_tokens_total", m): accepted,
            (P + "spec_decode_num_lockstep_dropped_tokens_total", m): dropped,
            (P + "spec_decode_num_drafts_total", m): drafts,
            (P + "spec_decode_num_draft_tokens_total", m): 4 * drafts,
        }

    d = server_delta(snap(10, 1, 5), snap(40, 11, 15), "draft", wall_s=1.0)
    assert d.acceptance_rate == 30 / 40  # what the target accepted: the draft's quality
    assert d.mean_accepted_length == 1 + (30 - 10) / 10  # what the verifications gave
