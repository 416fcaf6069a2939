"""PNG plots of a `bench serve` run (matplotlib, Agg backend: no display needed).

- throughput_vs_concurrency.png: output tok/s per method over the closed-loop concurrency levels;
- throughput_vs_request_rate.png: the same over the open-loop request rates;
- latency_vs_throughput.png: p50 e2e and p50 TTFT against output tok/s, one line per method and mode;
- speedup_vs_concurrency.png: each method's output tok/s over `none`'s at the same concurrency
  (only when `none` ran);
- mbu_mfu_vs_batch_size.png: MBU and MFU against the mean decode batch size (when /metrics gave them);
- pareto_user_vs_total.png: tokens/s per user (1 / TPOT) against output tokens/s in all, one curve
  per method, each point labelled with its concurrency or request rate: the batch-size trade-off
  in one picture (as `vllm bench sweep plot_pareto`).

`decode_speedup_plot` draws a `bench decode` run: each specserve method's tok/s over `none`'s against
the batch size (per compile mode when the run had several); `decode_compile_plot` each method's
compiled tok/s over eager's (`--compile on off`, and auto).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from specserve.bench.report import LevelResult  # noqa: E402

log = logging.getLogger(__name__)
MARKERS = {"closed": "o", "open": "s"}
LINES = {"closed": "-", "open": "--"}
COLORS = {
    "none": "tab:blue",
    "draft": "tab:orange",
    "ngram": "tab:green",
    "medusa": "tab:red",
    "eagle": "tab:purple",
}
VARIANT_COLORS = ["tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
_variants: dict[str, str] = {}


def _style(method: str, mode: str) -> dict:
    """One color per method (or METHOD:K variant) on every plot; the mode picks marker and line."""
    color = COLORS.get(method)
    if color is None:  # a variant such as draft:auto gets its own color, the same on every plot
        color = _variants.setdefault(method, VARIANT_COLORS[len(_variants) % len(VARIANT_COLORS)])
    return {"color": color, "marker": MARKERS[mode], "ls": LINES[mode]}


def _load(r: LevelResult) -> float:
    """A level's load (concurrency or request rate): lines join levels in this order."""
    return float(r.concurrency if r.mode == "closed" else r.request_rate)


def _log2_ticks(ax, ticks: set[tuple[float, str]]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks([t[0] for t in sorted(ticks)], [t[1] for t in sorted(ticks)])
    ax.minorticks_off()


def _by_method(levels: list[LevelResult], mode: str | None = None) -> dict[str, list[LevelResult]]:
    out: dict[str, list[LevelResult]] = {}
    for r in levels:
        if mode is None or r.mode == mode:
            out.setdefault(r.method, []).append(r)
    return out


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rate_axis(levels: list[LevelResult]) -> Callable[[LevelResult], float]:
    """x of an open-loop level: its rate, with inf (all at once) drawn at twice the largest finite one."""
    finite = [r.request_rate for r in levels if r.request_rate is not None and math.isfinite(r.request_rate)]
    inf_at = 2.0 * max(finite, default=1.0)
    return lambda r: (
        r.request_rate if r.request_rate is not None and math.isfinite(r.request_rate) else inf_at
    )


def _throughput(
    levels: list[LevelResult], mode: str, x: Callable[[LevelResult], float], xlabel: str, path: Path
):
    groups = _by_method(levels, mode)
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, rs in groups.items():
        rs = sorted(rs, key=x)
        ax.plot([x(r) for r in rs], [r.output_tokens_per_s for r in rs], label=method, **_style(method, mode))
    _log2_ticks(ax, {(x(r), r.load.split("=")[1]) for rs in groups.values() for r in rs})
    ax.set(xlabel=xlabel, ylabel="output tokens/s", title=f"Throughput ({mode} loop)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _two_panels(
    levels: list[LevelResult], x: Callable[[LevelResult], float | None], xlabel: str, panels, path: Path
) -> Path:
    """One line per (method, mode), joining its levels in load order, on each (y, ylabel, title) panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for (method, mode), rs in sorted(_groups(levels).items()):
        for ax, (y, *_) in zip(axes, panels, strict=True):
            pts = [(x(r), y(r)) for r in sorted(rs, key=_load) if x(r) is not None and y(r) is not None]
            ax.plot(
                [p[0] for p in pts], [p[1] for p in pts], label=f"{method} ({mode})", **_style(method, mode)
            )
    for ax, (_, ylabel, title) in zip(axes, panels, strict=True):
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _latency(levels: list[LevelResult], path: Path) -> Path:
    panels = [
        (lambda r: r.e2e_s.p50, "p50 e2e latency (s)", "e2e latency vs throughput"),
        (lambda r: r.ttft_s.p50, "p50 TTFT (s)", "TTFT vs throughput"),
    ]
    return _two_panels(levels, lambda r: r.output_tokens_per_s, "output tokens/s", panels, path)


def _groups(levels: list[LevelResult]) -> dict[tuple[str, str], list[LevelResult]]:
    out: dict[tuple[str, str], list[LevelResult]] = {}
    for r in levels:
        out.setdefault((r.method, r.mode), []).append(r)
    return out


def _speedup_lines(
    lines: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str, path: Path
) -> Path:
    """One line of (x, ratio over none) per method, a dashed 1.0 line, x on a log-2 axis."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in lines.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, **_style(name, "closed"))
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    _log2_ticks(ax, {(x, str(x)) for pts in lines.values() for x, _ in pts})
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _speedup(levels: list[LevelResult], path: Path) -> Path | None:
    groups = _by_method(levels, "closed")
    base = {r.concurrency: r.output_tokens_per_s for r in groups.get("none", []) if r.output_tokens_per_s}
    if not base or len(groups) < 2:
        return None
    lines = {
        method: [
            (r.concurrency, r.output_tokens_per_s / base[r.concurrency]) for r in rs if r.concurrency in base
        ]
        for method, rs in groups.items()
    }
    title = "Speedup over none (closed loop)"
    return _speedup_lines(lines, "concurrency", "output tok/s / none's", title, path)


def _utilization(levels: list[LevelResult], path: Path) -> Path | None:
    usable = [r for r in levels if r.mean_batch_size is not None and r.mbu is not None]
    if not usable:
        return None
    panels = [(lambda r: r.mbu, "MBU", "MBU vs batch size"), (lambda r: r.mfu, "MFU", "MFU vs batch size")]
    return _two_panels(usable, lambda r: r.mean_batch_size, "mean decode batch size", panels, path)


def _pareto(levels: list[LevelResult], path: Path) -> Path | None:
    usable = [r for r in levels if r.tokens_per_s_per_user and r.output_tokens_per_s]
    if not usable:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for (method, mode), rs in sorted(_groups(usable).items()):
        rs = sorted(rs, key=_load)
        x, y = [r.tokens_per_s_per_user for r in rs], [r.output_tokens_per_s for r in rs]
        ax.plot(x, y, label=f"{method} ({mode})", **_style(method, mode))
        for r, xi, yi in zip(rs, x, y, strict=True):
            ax.annotate(r.load.split("=")[1], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="tokens/s per user (1 / TPOT)", ylabel="output tokens/s in all",
           title="Per-user speed vs total throughput (labels: concurrency or request rate)")  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(levels: list[LevelResult], out_dir: Path) -> list[Path]:
    """Write every plot the levels allow; returns the files written."""
    written = [
        _throughput(
            levels,
            "closed",
            lambda r: r.concurrency,
            "concurrency",
            out_dir / "throughput_vs_concurrency.png",
        ),
        _throughput(
            levels,
            "open",
            _rate_axis(levels),
            "request rate (req/s)",
            out_dir / "throughput_vs_request_rate.png",
        ),
        _latency(levels, out_dir / "latency_vs_throughput.png") if levels else None,
        _speedup(levels, out_dir / "speedup_vs_concurrency.png"),
        _utilization(levels, out_dir / "mbu_mfu_vs_batch_size.png"),
        _pareto(levels, out_dir / "pareto_user_vs_total.png"),
    ]
    return [p for p in written if p is not None]


def decode_speedup_plot(results: list[dict], title: str, path: Path) -> Path | None:
    """`bench decode` results (dicts with impl, method, k, batch_size, ratios.vs_none) -> speedup plot."""
    lines: dict[str, list[tuple[int, float]]] = {}
    modes = {r.get("compile", "off") for r in results if r["impl"] == "specserve"}
    for r in results:
        if r["impl"] == "specserve" and r["method"] != "none" and "vs_none" in r["ratios"]:
            name = r["method"] if r["method"] == "medusa" else f"{r['method']}:{r['k']}"
            name += f" (compile {r.get('compile', 'off')})" if len(modes) > 1 else ""
            lines.setdefault(name, []).append((r["batch_size"], r["ratios"]["vs_none"]))
    if not lines:
        return None
    return _speedup_lines(lines, "batch size", "tok/s / none's", title, path)


def decode_compile_plot(results: list[dict], title: str, path: Path) -> Path | None:
    """Compiled over eager tok/s against the batch size: a color per method, a line style per
    compile mode (on: solid, auto: dashed)."""
    lines: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for r in results:
        if r["impl"] == "specserve" and "vs_eager" in r["ratios"]:
            name = r["method"] if r["method"] in ("none", "medusa") else f"{r['method']}:{r['k']}"
            key = (r["method"], name, r["compile"])
            lines.setdefault(key, []).append((r["batch_size"], r["ratios"]["vs_eager"]))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (method, name, mode), pts in lines.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{name}, compile {mode}", marker="o",
                color=COLORS.get(method, "tab:gray"), ls="-" if mode == "on" else "--")  # fmt: skip
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    _log2_ticks(ax, {(x, str(x)) for pts in lines.values() for x, _ in pts})
    ax.set(xlabel="batch size", ylabel="tok/s / eager's", title=title)
    ax.title.set_fontsize(10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
