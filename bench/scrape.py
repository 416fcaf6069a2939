"""Server-side figures of a load level from /metrics scraped before and after it, as `vllm bench
serve` does: the counters see every step, so acceptance, batch size, MBU and MFU need no guessing.

Levels run one at a time, so a delta is that level's traffic (other clients of the same server
would be counted too). Speculation series are filtered by the level's `method` label; the bytes
and FLOPs counters carry no method label and are taken whole.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

Snapshot = dict[tuple[str, frozenset], float]  # (sample name, labels) -> value
P = "specserve_"


def scrape(client: httpx.Client) -> Snapshot | None:
    """Every sample of /metrics, or None (with a warning) when the server exposes none."""
    try:
        r = client.get("/metrics")
        r.raise_for_status()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text)
            for s in fam.samples
        }
    except (httpx.HTTPError, ValueError) as e:
        log.warning(
            "no server metrics from %s/metrics (%s): server-side columns stay empty", client.base_url, e
        )
        return None


def total(snap: Snapshot, name: str, **labels: str) -> float:
    """Sum of `name` over the series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in snap.items() if n == name and want <= lab)


@dataclass
class ServerDelta:
    """Counter deltas over one level, and what they give (None where a denominator is 0)."""

    generation_tokens: float
    requests: float
    drafts: float
    draft_tokens: float
    accepted_tokens: float
    decode_steps: float
    decode_rows: float
    bytes_read: float
    flops: float
    peak_bandwidth_bytes_per_s: float
    peak_flops_per_s: float
    prefix_cache_queries: float = 0.0  # prompt tokens looked up (every method's: no method label)
    prefix_cache_hits: float = 0.0  # of those, found cached
    prefix_cache_hit_rate: float | None = None
    acceptance_rate: float | None = None  # accepted / draft tokens
    mean_accepted_length: float | None = None  # 1 + kept / drafts: tokens per verification
    mean_batch_size: float | None = None  # rows per decode step
    bandwidth_bytes_per_s: float | None = None
    mbu: float | None = None
    mfu: float | None = None


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def server_delta(before: Snapshot, after: Snapshot, method: str, wall_s: float) -> ServerDelta:
    def d(name: str, **labels: str) -> float:
        return total(after, P + name, **labels) - total(before, P + name, **labels)

    m = {"method": method}
    dec = {"method": method, "phase": "decode"}
    out = ServerDelta(
        generation_tokens=d("generation_tokens_total", **m),
        requests=d("request_success_total", **m),
        drafts=d("spec_decode_num_drafts_total", **m),
        draft_tokens=d("spec_decode_num_draft_tokens_total", **m),
        accepted_tokens=d("spec_decode_num_accepted_tokens_total", **m),
        decode_steps=d("step_batch_size_count", **dec),
        decode_rows=d("step_batch_size_sum", **dec),
        bytes_read=d("model_bytes_read_total"),
        flops=d("model_flops_total"),
        peak_bandwidth_bytes_per_s=total(after, P + "peak_memory_bandwidth_bytes_per_second"),
        peak_flops_per_s=total(after, P + "peak_flops_per_second"),
        prefix_cache_queries=d("prefix_cache_queries_total"),
        prefix_cache_hits=d("prefix_cache_hits_total"),
    )
    out.prefix_cache_hit_rate = _ratio(out.prefix_cache_hits, out.prefix_cache_queries)
    out.acceptance_rate = _ratio(out.accepted_tokens, out.draft_tokens)
    out.mean_accepted_length = 1.0 + out.accepted_tokens / out.drafts if out.drafts else None
    out.mean_batch_size = _ratio(out.decode_rows, out.decode_steps)
    if wall_s > 0:
        out.bandwidth_bytes_per_s = out.bytes_read / wall_s
        out.mbu = _ratio(out.bytes_read / wall_s, out.peak_bandwidth_bytes_per_s)
        out.mfu = _ratio(out.flops / wall_s, out.peak_flops_per_s)
    return out


def metrics_enabled(snap: Snapshot | None) -> bool:
    """A server started with --no-metrics still answers /metrics, but never sets its peak gauges."""
    return bool(snap) and total(snap, P + "peak_memory_bandwidth_bytes_per_second") > 0


def settled(client: httpx.Client, before: Snapshot, method: str, finished: int, timeout_s: float) -> Snapshot:
    """Scrape after a level once the server has counted its `finished` requests and holds none.

    A stream's last event leaves the engine thread just before the request's counters are bumped,
    so a scrape right after the client's last byte could miss it. The e2e histogram is observed
    after the token counters (and the step counters before both), so its count is the signal.
    """
    name = P + "request_e2e_latency_seconds_count"
    deadline = time.monotonic() + timeout_s
    while True:
        snap = scrape(client) or {}
        done = total(snap, name, method=method) - total(before, name, method=method)
        busy = total(snap, P + "num_requests_running") + total(snap, P + "num_requests_waiting")
        if done >= finished and not busy:
            return snap
        if time.monotonic() > deadline:
            log.warning("server not idle %.0f s after the level; its deltas may be partial", timeout_s)
            return snap
        time.sleep(0.02)
