"""The load tool's acceptance figures from /metrics deltas."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from specserve.bench.scrape import P, server_delta


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_mean_accepted_length_and_acceptance_rate_from_deltas():
    def snap(accepted: float, drafts: float) -> dict:
        m = frozenset({("method", "draft")})
        return {
            (P + "spec_decode_num_accepted_tokens_total", m): accepted,
            (P + "spec_decode_num_drafts_total", m): drafts,
            (P + "spec_decode_num_draft_tokens_total", m): 4 * drafts,
        }

    d = server_delta(snap(10, 5), snap(40, 15), "draft", wall_s=1.0)
    assert d.acceptance_rate == 30 / 40  # what the target accepted: the draft's quality
    assert d.mean_accepted_length == 1 + 30 / 10  # what the verifications gave
