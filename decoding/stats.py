"""Per-step and per-request statistics as plain dataclasses; metrics/ turns them into series."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Forward:
    """One forward of one model over a batch: the facts bytes and FLOPs are computed from."""

    model: str  # "target" or "draft"
    tokens: list[int]  # tokens fed per row ([B]; padding excluded)
    columns: int  # cache columns every row's attention read before this forward (holes included)


@dataclass
class StepStats:
    """One engine step of one sub-batch (a prefill of new rows, or a propose -> verify -> commit)."""

    method: str
    phase: str  # "prefill" or "decode"
    batch_size: int
    tokens_verified: int = 0  # tokens fed to the target (prefill: prompt tokens not found cached)
    cached_tokens: int = 0  # prefill: prompt tokens whose keys/values came from the prefix cache
    draft_tokens: int = 0  # candidates proposed over all rows
    accepted_tokens: int = 0  # candidates the target accepted over all rows
    emitted_tokens: int = 0  # tokens appended to outputs (accepted + recovered/bonus, after stops)
    accepted_per_position: list[int] = field(default_factory=list)  # [K] rows accepting position j
    reached_per_position: list[int] = field(default_factory=list)  # [K] rows that tested position j
    drafted_per_position: list[int] = field(default_factory=list)  # [K] rows proposing position j
    accepted_per_row: list[int] = field(default_factory=list)  # [B] candidates each row accepted
    prefill_s: float = 0.0
    propose_s: float = 0.0
    verify_s: float = 0.0
    sync_s: float = 0.0  # of propose_s: a draft or EAGLE head catching up on what plain steps left
    k: int = 0  # speculative tokens asked for this step
    compiled: bool = False  # a graph compiled during the step: its time is not the step's
    trial: bool = False  # it ran at a thread count on trial: its time is the trial's, not the step's
    forwards: list[Forward] = field(default_factory=list)  # every model forward the step ran
    bytes_read: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> weights/kv -> bytes
    flops: dict[str, float] = field(default_factory=dict)  # model -> FLOPs (filled by an accountant)

    @property
    def duration_s(self) -> float:
        return self.prefill_s + self.propose_s + self.verify_s


@dataclass
class RequestStats:
    """What one request cost and what speculation bought it: the per-request stats every response
    and `specserve generate --json` carry (README "Command line")."""

    method: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_time_s: float = 0.0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    target_forwards: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens: found in the prefix cache, not computed
    batch_size_sum: int = 0  # sum over the forwards this request took part in
    k_sum: int = 0  # speculative tokens asked for, summed over its decode steps (adaptive: chosen per step)
    decode_steps: int = 0
    bytes_read: float = 0.0  # its share of weights and its own KV over every forward (an accountant's)
    flops: float = 0.0
    peak_bytes_per_s: float = 0.0  # the device's peaks, for mbu / mfu (0: unknown)
    peak_flops_per_s: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per target forward (1.0 for plain decoding)."""
        return self.completion_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.batch_size_sum / self.target_forwards if self.target_forwards else 0.0

    @property
    def mean_num_speculative_tokens(self) -> float:
        """K per decode step, on average (adaptive speculation chooses it per step; 0 = plain)."""
        return self.k_sum / self.decode_steps if self.decode_steps else 0.0

    @property
    def busy_s(self) -> float:
        """Time in the batch: end to end less the queue."""
        return max(self.e2e_s - self.queue_time_s, 0.0)

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.bytes_read / self.busy_s if self.busy_s else 0.0

    @property
    def mbu(self) -> float:
        return self.bandwidth_bytes_per_s / self.peak_bytes_per_s if self.peak_bytes_per_s else 0.0

    @property
    def mfu(self) -> float:
        return (
            self.flops / self.busy_s / self.peak_flops_per_s if self.peak_flops_per_s and self.busy_s else 0.0
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        for internal in ("batch_size_sum", "peak_bytes_per_s", "peak_flops_per_s", "k_sum", "decode_steps"):
            d.pop(internal)
        d["acceptance_rate"] = self.acceptance_rate
        d["mean_accepted_length"] = self.mean_accepted_length
        d["mean_batch_size"] = self.mean_batch_size
        d["num_speculative_tokens"] = self.mean_num_speculative_tokens
        d["bandwidth_bytes_per_s"] = self.bandwidth_bytes_per_s
        d["mbu"] = self.mbu
        d["mfu"] = self.mfu
        return d
