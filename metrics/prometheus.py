"""Prometheus metrics on an injected `CollectorRegistry` (never the global one), fed from the
engine's dataclasses. Names follow vLLM's (prefix `specserve_`), so PromQL habits transfer.

PromQL (what the dashboard plots):
- generated tokens/s:   sum(rate(specserve_generation_tokens_total[1m]))
- acceptance rate:      sum(rate(specserve_spec_decode_num_accepted_tokens_total[1m]))
                        / sum(rate(specserve_spec_decode_num_draft_tokens_total[1m]))
- mean accepted length (tokens per verification): 1 + sum(rate(..._num_accepted_tokens_total[1m]))
                        / sum(rate(specserve_spec_decode_num_drafts_total[1m]))
- achieved bandwidth:   sum(rate(specserve_model_bytes_read_total[1m]))
- MBU:                  sum(rate(specserve_model_bytes_read_total[1m]))
                        / max(specserve_peak_memory_bandwidth_bytes_per_second)
- MFU:                  sum(rate(specserve_model_flops_total[1m])) / max(specserve_peak_flops_per_second)
- effective bandwidth (what plain decoding would have read for the same tokens; only speculation
  lifts it past the physical peak):
                        sum(rate(specserve_generation_tokens_total[1m]))
                        * max(specserve_model_weight_bytes{model="target"})
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from specserve.decoding.row import Row
from specserve.decoding.stats import StepStats

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
RATE = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BANDWIDTH = tuple(10.0**e for e in range(6, 14))  # 1 MB/s .. 10 TB/s


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p, r = "specserve_", {"registry": registry}

        def hist(name: str, doc: str, labels: list[str], buckets) -> Histogram:
            return Histogram(p + name, doc, labels, buckets=buckets, **r)

        self.ttft = hist("time_to_first_token_seconds", "Arrival to first token.", ["method"], LATENCY)
        self.itl = hist(
            "inter_token_latency_seconds", "Between a request's emitted steps.", ["method"], TOKEN_LATENCY
        )
        self.tpot = hist(
            "time_per_output_token_seconds",
            "(e2e - ttft) / (tokens - 1) per request.",
            ["method"],
            TOKEN_LATENCY,
        )
        self.e2e = hist("request_e2e_latency_seconds", "Arrival to last token.", ["method"], LATENCY)
        self.queue = hist("request_queue_time_seconds", "Arrival to admission.", ["method"], LATENCY)
        self.running = Gauge(p + "num_requests_running", "Requests in the running batch.", **r)
        self.waiting = Gauge(p + "num_requests_waiting", "Requests queued for a batch slot.", **r)
        self.batch = hist("step_batch_size", "Rows per engine step.", ["method", "phase"], BATCH)
        self.step_s = hist(
            "step_duration_seconds", "Engine step time by phase.", ["method", "phase"], LATENCY
        )
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens prefilled.", ["method"], **r)
        self.generation_tokens = Counter(p + "generation_tokens", "Tokens generated.", ["method"], **r)
        self.prefix_queries = Counter(
            p + "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", **r
        )
        self.prefix_hits = Counter(p + "prefix_cache_hits", "Prompt tokens found in the prefix cache.", **r)
        self.requests = Counter(p + "request_success", "Finished requests.", ["finish_reason", "method"], **r)
        self.drafts = Counter(
            p + "spec_decode_num_drafts", "Verifications of rows with candidates.", ["method"], **r
        )
        self.draft_tokens = Counter(
            p + "spec_decode_num_draft_tokens", "Candidates proposed.", ["method"], **r
        )
        self.accepted = Counter(
            p + "spec_decode_num_accepted_tokens", "Candidates accepted.", ["method"], **r
        )
        self.accepted_pos = Counter(
            p + "spec_decode_num_accepted_tokens_per_pos",
            "Candidates accepted at each draft position.",
            ["method", "position"],
            **r,
        )
        self.k_chosen = hist("spec_decode_num_speculative_tokens", "K per decode step (adaptive: chosen).",
                             ["method"], (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16))  # fmt: skip
        self.acceptance = hist("request_acceptance_rate", "Per-request acceptance rate.", ["method"], RATE)
        self.bytes = Counter(p + "model_bytes_read", "Bytes read by model forwards.", ["model", "kind"], **r)
        self.flops = Counter(p + "model_flops", "FLOPs of model forwards.", ["model"], **r)
        self.weight_bytes = Gauge(
            p + "model_weight_bytes", "Weight bytes of each loaded model.", ["model"], **r
        )
        self.peak_bw = Gauge(p + "peak_memory_bandwidth_bytes_per_second", "Device peak bandwidth.", **r)
        self.peak_flops = Gauge(p + "peak_flops_per_second", "Device peak FLOP/s.", **r)
        self.request_bw = hist(
            "request_bandwidth_bytes_per_second", "Per-request achieved bandwidth.", ["method"], BANDWIDTH
        )
        self.kv_bytes = Gauge(p + "kv_cache_bytes", "KV cache bytes held (holes included).", **r)
        self.prefix_bytes = Gauge(p + "prefix_cache_bytes", "Prompt keys/values kept for reuse.", **r)
        self.threads = Gauge(p + "engine_threads", "torch CPU threads of the engine's latest step.", **r)
        self.info = Info(p + "build", "Version, models, device and dtype.", **r)
        self._last_emit: dict[str, float] = {}  # request id -> when its previous step emitted
        self._lock = threading.Lock()

    def on_step(self, s: StepStats) -> None:
        """Engine thread: one call per prefill or decode step of a sub-batch."""
        self.batch.labels(s.method, s.phase).observe(s.batch_size)
        if s.phase == "prefill":
            self.step_s.labels(s.method, "prefill").observe(s.prefill_s)
            self.prefix_queries.inc(s.tokens_verified + s.cached_tokens)
            self.prefix_hits.inc(s.cached_tokens)
        else:
            self.step_s.labels(s.method, "propose").observe(s.propose_s)
            self.step_s.labels(s.method, "verify").observe(s.verify_s)
            self.k_chosen.labels(s.method).observe(s.k)
        if s.drafted_per_position and s.drafted_per_position[0]:
            self.drafts.labels(s.method).inc(s.drafted_per_position[0])  # rows that proposed anything
            self.draft_tokens.labels(s.method).inc(s.draft_tokens)
            self.accepted.labels(s.method).inc(s.accepted_tokens)
            for pos, n in enumerate(s.accepted_per_position):
                self.accepted_pos.labels(s.method, str(pos)).inc(n)
        for model, kinds in s.bytes_read.items():
            for kind, n in kinds.items():
                self.bytes.labels(model, kind).inc(n)
        for model, n in s.flops.items():
            self.flops.labels(model).inc(n)

    def on_tokens(self, row: Row, tokens: list[int]) -> None:
        """Engine thread: a row emitted tokens; the gap since its previous step is one ITL sample."""
        now = time.perf_counter()
        with self._lock:
            last = self._last_emit.get(row.request_id)
            self._last_emit[row.request_id] = now
        if last is not None:
            self.itl.labels(row.stats.method).observe(now - last)

    def on_finished(self, row: Row) -> None:
        st, m = row.stats, row.stats.method
        with self._lock:
            self._last_emit.pop(row.request_id, None)
        self.requests.labels(row.finish_reason or "abort", m).inc()
        self.prompt_tokens.labels(m).inc(st.prompt_tokens)
        self.generation_tokens.labels(m).inc(st.completion_tokens)
        self.e2e.labels(m).observe(st.e2e_s)
        self.queue.labels(m).observe(st.queue_time_s)
        if st.completion_tokens:
            self.ttft.labels(m).observe(st.ttft_s)
        if st.completion_tokens > 1:
            self.tpot.labels(m).observe((st.e2e_s - st.ttft_s) / (st.completion_tokens - 1))
        if st.draft_tokens:
            self.acceptance.labels(m).observe(st.acceptance_rate)
        if st.bytes_read:
            self.request_bw.labels(m).observe(st.bandwidth_bytes_per_s)
