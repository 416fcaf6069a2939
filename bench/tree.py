"""`specserve bench tree`: fit the Medusa tree to these heads and this machine.

1. Accuracy: on validation windows, how often rank r of head k holds the target's own next-token
   choice k + 1 positions ahead, acc[k][r].
2. Cost: seconds of one target forward verifying N tree tokens over a cached context, for N in a
   sweep and batch sizes 1..16, measured here (median of repeats, after warm-up).
3. Choice: trees grow greedily by the node whose path is most likely to be accepted (Medusa's
   construction, assuming heads err independently); a tree's expected tokens per step is
   1 + sum over nodes of the product of acc along the node's path. Expected tokens/s = that divided by
   the measured step cost at the chosen batch size; the best tree is stored in the heads' config.json
   (the server then uses it) with the whole table in tree.json beside it.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from specserve.decoding.compiled import CompiledForward, use_compile_cache
from specserve.decoding.kv import KVState
from specserve.decoding.tree import build_tree
from specserve.models.loading import Models

log = logging.getLogger(__name__)


@torch.no_grad()
def rank_accuracy(target, heads, windows: torch.Tensor, max_rank: int, batch: int = 8) -> list[list[float]]:
    """acc[k][r]: share of positions where head k's rank-r guess is the target's own choice."""
    K = heads.config.num_heads
    hits, n = torch.zeros(K, max_rank), torch.zeros(K)
    for i in range(0, len(windows), batch):
        h = target.base_model(input_ids=windows[i : i + batch]).last_hidden_state  # [B, T, H]
        truth = target.get_output_embeddings()(h).argmax(-1)  # [B, T]
        top = heads(h).topk(max_rank, dim=-1).indices  # [B, T, K, R]
        T = h.shape[1]
        for k in range(K):
            eq = top[:, : T - k - 1, k] == truth[:, k + 1 :, None]  # [B, T - k - 1, R]
            hits[k] += eq.flatten(0, 1).sum(0).float()
            n[k] += eq.shape[0] * eq.shape[1]
    return (hits / n[:, None]).tolist()


def grow_trees(acc: list[list[float]], max_nodes: int) -> list[tuple[list[tuple[int, ...]], float]]:
    """Greedy best-first trees of 1..max_nodes nodes with their expected accepted tokens per step."""
    K, R = len(acc), len(acc[0])
    frontier = [(-acc[0][r], (r,)) for r in range(R)]
    heapq.heapify(frontier)
    chosen, expected, out = [], 0.0, []
    while frontier and len(chosen) < max_nodes:
        neg_p, path = heapq.heappop(frontier)
        chosen.append(path)
        expected += -neg_p
        out.append((list(chosen), expected))
        if len(path) < K:
            for r in range(R):
                heapq.heappush(frontier, (neg_p * acc[len(path)][r], (*path, r)))
    return out


@torch.no_grad()
def verify_cost(
    target, batch_size: int, n_tree: int, context: int, repeats: int, compiled: CompiledForward | None = None
) -> float:
    """Median seconds of one tree-verification forward (N + 1 tokens per row) over `context` cached,
    compiled when given a compiled forward (the first, untimed repeat compiles)."""
    tree = build_tree([(r,) for r in range(n_tree)], 1).to(target.device)  # cost depends on N only
    ids = torch.randint(0, target.config.vocab_size, (batch_size, tree.num_nodes), device=target.device)
    times = []
    for rep in range(repeats + 1):
        kv = KVState.empty(target, batch_size, compiled=compiled)
        kv.forward(target, torch.randint(0, target.config.vocab_size, (batch_size, context)), logits="last")
        t0 = time.perf_counter()
        kv.forward_tree(target, ids, tree)
        if rep:  # the first is warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args: argparse.Namespace, models: Models) -> int:
    """Fit and (unless --no-store) store the tree for these models' Medusa heads."""
    from specserve.models.medusa_train import MedusaTrainConfig, corpus_windows

    target, heads = models.target.model, models.medusa
    cfg = MedusaTrainConfig(seq_len=256, val_windows=args.val_windows)
    _, val = corpus_windows(models.target.tokenizer, args.work_dir, cfg, None)
    windows = val.evenly(args.val_windows).to(models.target.device)
    acc = rank_accuracy(target, heads, windows, args.max_rank)
    trees = grow_trees(acc, max(args.sizes))
    args.sizes = [n for n in args.sizes if 1 <= n <= len(trees)]
    compiled = None
    if args.compile != "off":  # the verify cost of the steps the server will run
        use_compile_cache(args.compile_cache)
        compiled = CompiledForward(target, "target")
    costs: dict[int, dict[int, float]] = {}
    bar = tqdm(total=len(args.batch_sizes) * len(args.sizes), desc="bench tree", file=sys.stderr)
    for b in args.batch_sizes:
        costs[b] = {}
        for n in args.sizes:
            costs[b][n] = verify_cost(target, b, n, args.context, args.repeats, compiled)
            if args.compile == "auto":  # the server runs each kind of forward the faster way
                costs[b][n] = min(costs[b][n], verify_cost(target, b, n, args.context, args.repeats))
            bar.update()
    bar.close()
    table = []
    for b in args.batch_sizes:
        for n in args.sizes:
            expected = trees[n - 1][1]
            tokens = 1 + expected  # the bonus / recovered token plus the expected accepted ones
            step_s = costs[b][n]
            row = {"batch_size": b, "nodes": n, "expected_tokens_per_step": tokens, "step_s": step_s}
            table.append(row | {"expected_tokens_per_s": b * tokens / step_s})
    fit = [t for t in table if t["batch_size"] == args.fit_batch_size] or table
    best = max(fit, key=lambda t: t["expected_tokens_per_s"])
    best_paths = [list(p) for p in trees[best["nodes"] - 1][0]]
    report = {"accuracy": acc, "table": table, "best": best, "tree": best_paths, "context": args.context,
              "compiled": compiled is not None and compiled.enabled and compiled.calls > 0}  # fmt: skip
    out_dir = Path(models.medusa_path)
    if not args.no_store:
        config_path = out_dir / "config.json"
        config = json.loads(config_path.read_text())
        config["tree"] = best_paths
        config_path.write_text(json.dumps(config, indent=2))
        (out_dir / "tree.json").write_text(json.dumps(report, indent=2))
    sys.stdout.write(
        "head accuracy (top-1..3): "
        + "; ".join(f"head {k}: " + ", ".join(f"{a:.2f}" for a in row[:3]) for k, row in enumerate(acc))
        + f"\nbest tree at batch {best['batch_size']}: {best['nodes']} nodes, "
        f"{best['expected_tokens_per_step']:.2f} tokens/step expected, {best['step_s'] * 1e3:.1f} ms/step"
        + ("" if args.no_store else f"\nstored in {out_dir / 'config.json'}")
        + "\n"
    )
    return 0
