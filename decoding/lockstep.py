"""Lockstep: speculation never changes which rows finish together.

Plain decoding keeps rows with the same number of tokens left (requests with equal `max_tokens`
admitted in one prefill) in lockstep: they step together, leave at the same step, and the requests
that replace them join in one batched prefill, into a cache that emptied with them. On this engine's
padded cache that is worth a share of plain throughput that grows with the batch
(docs/batch-tradeoffs.md measures it).
Speculation ends it for good: rows accept different numbers of candidates, drift apart, and from
then on leave one by one, their successors join one by one, and the cache stays as wide as its
oldest row.

So an adaptive step clips each *group* (rows that plain decoding would finish at the same step, or
within LOCK_WINDOW steps: `groups`) to the group's smallest accepted count: a row whose verdict
went further emits only that many candidates, then the next candidate (which it also accepted)
instead of its recovered or bonus token. Every row still emits a
prefix of what verification gave it, cut at a point fixed by the other rows' draws and by whether
its own tokens so far were accepted: a stopping time, so each emitted token keeps the target's
distribution given the ones before it (and under greedy it is the argmax, as before). Lossless.

The price is the accepted tokens dropped, and the controller prices it in: a group of g rows
advances past candidate j only when all g accept it, about (a_0 ... a_j)^g of the time, so large
groups make speculation pointless and the controller steps plainly, keeping the lockstep.
Fixed-K rows are never clipped (a fixed K is the caller's choice). A seeded row's tokens do not
depend on the clip: each is its position's draw from p (decoding/step.py `_couple`).
"""

from __future__ import annotations

from collections import Counter

import torch

from specserve.decoding.row import Row

LOCK_WINDOW = 2  # steps: rows plain decoding would end this close together advance together


def groups(rows: list[Row], window: int = LOCK_WINDOW) -> list[int]:
    """Group id of each row: rows that may be clipped, are as far ahead of plain decoding as each
    other (tokens gained by speculation: plain_end - left) and would have finished within `window`
    steps of the group's first under plain decoding share one; every other row gets its own.

    Requests that start together are admitted over a step or two, so plain decoding ends them a
    step or two apart, and their successors still join together. Advancing such rows as one
    group keeps that spread as it is; with a group per exact end step, each group advanced at its
    own pace, they drifted apart, and their successors joined one group at a time.
    Equal gains keep out rows whose counts meet by chance after unclipped speculation (faster
    rows overtaking slower ones): plain decoding never holds those together."""
    out = list(range(len(rows)))
    by_gain: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if r.spec.adaptive:
            by_gain.setdefault(r.plain_end - r.left, []).append(i)
    for idx in by_gain.values():
        idx.sort(key=lambda i: rows[i].plain_end)
        first = idx[0]
        for i in idx:
            if rows[i].plain_end > rows[first].plain_end + window:
                first = i  # too far from the group's first: a new group starts here
            out[i] = len(rows) + first
    return out


def group_sizes(ids: list[int]) -> list[int]:
    """Size of each row's group. [B] -> [B]"""
    count: dict[int, int] = {}
    for g in ids:
        count[g] = count.get(g, 0) + 1
    return [count[g] for g in ids]


def clip(
    num_accepted: torch.Tensor, next_token: torch.Tensor, candidates: list[list[int]], ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Cut each group to its smallest accepted count. num_accepted, next_token: [B].

    Returns the clipped (num_accepted, next_token) and the accepted candidates dropped."""
    n = num_accepted.tolist()
    low: dict[int, int] = {}
    for g, a in zip(ids, n, strict=True):
        low[g] = min(low.get(g, a), a)
    nxt = next_token.tolist()
    dropped = 0
    for b, g in enumerate(ids):
        m = low[g]
        if n[b] > m:  # candidate m was accepted: emit it in place of the recovered/bonus token
            dropped += n[b] - m
            n[b], nxt[b] = m, candidates[b][m]
    return (
        torch.tensor(n, dtype=num_accepted.dtype, device=num_accepted.device),
        torch.tensor(nxt, dtype=next_token.dtype, device=next_token.device),
        dropped,
    )


def expected_tokens(reach: list[float], sizes: list[int] | dict[int, int]) -> float:
    """Expected tokens per row and step when each row's group advances together.

    reach: [K] probability that one row gets past candidate j (emits it); sizes: [B] group sizes,
    or {group size: rows} (the controller asks ~20 times a step: per size, not per row).
    A group of g rows gets past j when all of them do: reach_j ** g (rows drawn independently)."""
    if not sizes:
        return 1.0 + sum(reach)
    rows = sizes if isinstance(sizes, dict) else Counter(sizes)
    return sum(n * (1.0 + sum(r**g for r in reach)) for g, n in rows.items()) / sum(rows.values())
