"""Basic server metrics on an injected `CollectorRegistry` (never the global one).

PromQL:
- request rate by outcome: `sum by (finish_reason) (rate(specserve_request_success_total[1m]))`
- generated tokens/s:      `rate(specserve_generation_tokens_total[1m])`
- acceptance rate:         `rate(specserve_spec_decode_num_accepted_tokens_total[1m])
                            / rate(specserve_spec_decode_num_draft_tokens_total[1m])`
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from decoding.row import Row
from decoding.stats import StepStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p = "specserve_"
        self.running = Gauge(p + "num_requests_running", "Requests in the running batch.", registry=registry)
        self.waiting = Gauge(
            p + "num_requests_waiting", "Requests queued for a batch slot.", registry=registry
        )
        self.requests = Counter(
            p + "request_success", "Finished requests.", ["finish_reason", "method"], registry=registry
        )
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens prefilled.", registry=registry)
        self.generation_tokens = Counter(p + "generation_tokens", "Tokens generated.", registry=registry)
        self.e2e = Histogram(
            p + "request_e2e_latency_seconds",
            "Arrival to last token.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "Arrival to first token.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.drafts = Counter(
            p + "spec_decode_num_drafts", "Verification steps with candidates.", ["method"], registry=registry
        )
        self.draft_tokens = Counter(
            p + "spec_decode_num_draft_tokens", "Candidates proposed.", ["method"], registry=registry
        )
        self.accepted_tokens = Counter(
            p + "spec_decode_num_accepted_tokens", "Candidates accepted.", ["method"], registry=registry
        )

    def on_step(self, s: StepStats) -> None:
        """Engine thread: one call per prefill or decode step."""
        if s.phase == "decode" and s.draft_tokens:
            self.drafts.labels(s.method).inc(s.drafted_per_position[0])  # rows that proposed anything
            self.draft_tokens.labels(s.method).inc(s.draft_tokens)
            self.accepted_tokens.labels(s.method).inc(s.accepted_tokens)

    def on_finished(self, row: Row) -> None:
        st = row.stats
        self.requests.labels(row.finish_reason or "abort", st.method).inc()
        self.prompt_tokens.inc(st.prompt_tokens)
        self.generation_tokens.inc(st.completion_tokens)
        self.e2e.labels(st.method).observe(st.e2e_s)
        if st.completion_tokens:
            self.ttft.labels(st.method).observe(st.ttft_s)
