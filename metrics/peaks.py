"""Peak memory bandwidth and FLOP/s of the device, for MBU and MFU.

Known GPUs come from a table (dense bf16 tensor-core FLOP/s, HBM bandwidth); anything else gets a
short probe at start-up (a large copy and a fixed-size GEMM, logged); flags override both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# name substring -> (bytes/s, FLOP/s); the first match wins, so more specific names come first
KNOWN_GPUS: list[tuple[str, float, float]] = [
    ("H200", 4.8e12, 989e12),
    ("H100 PCIe", 2.0e12, 756e12),
    ("H100", 3.35e12, 989e12),
    ("A100-SXM4-80GB", 2.039e12, 312e12),
    ("A100 80GB", 2.0e12, 312e12),
    ("A100", 1.555e12, 312e12),
    ("L40S", 0.864e12, 362e12),
    ("A10G", 0.6e12, 125e12),
    ("L4", 0.3e12, 121e12),
    ("T4", 0.32e12, 65e12),
]


@dataclass(frozen=True)
class Peaks:
    bytes_per_s: float
    flops_per_s: float
    source: str  # "table: <name>", "probe" or "flag"


def _timed(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def probe(device: torch.device, dtype: torch.dtype = torch.float32) -> Peaks:
    """Measure: a 64 MiB copy (read + write), best of twenty (best of five read 25-31 GB/s on this
    project's CPU from one start to the next; twenty, 35-37), and a 1024^3 GEMM, best of five."""
    n = 16 * 1024 * 1024
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy_s = _timed(lambda: dst.copy_(src), repeats=20)
    a = torch.randn(1024, 1024, dtype=dtype, device=device)
    b = torch.randn(1024, 1024, dtype=dtype, device=device)
    gemm_s = _timed(lambda: a @ b)
    peaks = Peaks(2 * src.nbytes / copy_s, 2 * 1024**3 / gemm_s, "probe")
    log.info("peak probe on %s: %.1f GB/s copy, %.1f GFLOP/s %s GEMM", device, peaks.bytes_per_s / 1e9,
             peaks.flops_per_s / 1e9, dtype)  # fmt: skip
    return peaks


def device_peaks(
    device: torch.device, dtype: torch.dtype, bandwidth: float | None = None, flops: float | None = None
) -> Peaks:
    """Flags first, then the table (CUDA devices by name), then a probe."""
    if bandwidth is not None and flops is not None:
        return Peaks(bandwidth, flops, "flag")
    found: Peaks | None = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = next((Peaks(bw, fl, f"table: {key}") for key, bw, fl in KNOWN_GPUS if key in name), None)
    if found is None:
        found = probe(device, dtype if dtype != torch.float64 else torch.float32)
    if bandwidth is not None or flops is not None:
        return Peaks(bandwidth or found.bytes_per_s, flops or found.flops_per_s, f"flag + {found.source}")
    return found
