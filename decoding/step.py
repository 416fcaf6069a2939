"""One engine step as plain functions: prefill new rows, or propose -> verify -> accept -> commit."""

from __future__ import annotations

import time

import torch
from transformers import PreTrainedModel

from specserve.decoding import lockstep
from specserve.decoding.acceptance import Verdict, verify_greedy, verify_match, verify_rejection
from specserve.decoding.batch import SubBatch
from specserve.decoding.prefix_cache import PrefixCache, prefill_kv
from specserve.decoding.proposer import Emit, Proposal
from specserve.decoding.row import Row
from specserve.decoding.sampling import Warp, draw_uniforms, position_uniforms, sample, warp_probs
from specserve.decoding.stats import StepStats


def _warp(rows: list[Row], device: torch.device) -> Warp:
    return Warp.from_params([r.sampling for r in rows], device)


def prefill(
    target: PreTrainedModel, batch: SubBatch, new: list[Row], emit: Emit, prefix: PrefixCache | None = None
) -> StepStats:
    """Run the prompts of joining rows through target (and draft), emit each row's first token.

    With a prefix cache, each row starts from its longest cached prefix and feeds only the rest."""
    t0 = time.perf_counter()
    seqs = [r.tokens for r in new]
    kv, out, fed = prefill_kv(target, seqs, prefix, hidden=batch.proposer.needs_hidden)
    logits, hidden = out if batch.proposer.needs_hidden else (out, None)  # [B_new, V], [B_new, H]
    cached = [len(s) - len(f) for s, f in zip(seqs, fed, strict=True)]  # (before emit grows r.tokens)
    warp = _warp(new, logits.device)
    first = logits.argmax(-1)  # [B_new]
    if not bool(warp.greedy.all()):
        u = position_uniforms([r.stream for r in new], [0] * len(new), 1, logits.device)[:, 0]  # [B_new]
        first = torch.where(warp.greedy, first, sample(warp_probs(logits[:, None], warp)[:, 0], u))
    batch.kv.extend(kv)
    batch.proposer.admit(new, hidden)
    batch.join(new)
    now = time.perf_counter()
    for row, tok, c in zip(new, first.tolist(), cached, strict=True):
        row.stats.cached_tokens = c
        row.admitted = row.admitted or t0
        row.stats.queue_time_s = row.admitted - row.arrival
        row.stats.target_forwards += 1
        row.stats.batch_size_sum += len(new)
        emit(row, row.emit([tok]))
        row.stats.ttft_s = now - row.arrival
    stats = StepStats(
        batch.method, "prefill", len(new), tokens_verified=sum(r.prompt_len for r in new) - sum(cached),
        prefill_s=now - t0, cached_tokens=sum(cached),
    )  # fmt: skip
    stats.forwards = batch.kv.drain() + batch.proposer.drain_forwards()
    return stats


def _accept(
    logits: torch.Tensor, prop: Proposal, warp: Warp, u: torch.Tensor | None, u_pos: torch.Tensor | None
) -> Verdict:
    """logits [B, T, V]; u [B, K] acceptance uniforms, u_pos [B, T] uniforms of the positions the
    step may emit (both None when every row is greedy)."""
    dev = logits.device
    K = logits.shape[1] - 1
    if K == 0 and u_pos is None:  # plain greedy step
        return Verdict(torch.zeros(logits.shape[0], dtype=torch.long, device=dev), logits[:, 0].argmax(-1))
    n_cand = torch.tensor([len(t) for t in prop.tokens], device=dev)  # [B]
    cand = torch.tensor([t + [-1] * (K - len(t)) for t in prop.tokens], dtype=torch.long, device=dev).view(
        len(prop.tokens), K
    )
    verdict = verify_greedy(logits.argmax(-1), cand, n_cand)
    if u_pos is None:
        return verdict
    s = (~warp.greedy).nonzero().squeeze(1)  # sampling rows
    if len(s):
        p = warp_probs(logits[s], warp.select(s))  # [S, T, V]
        if prop.q is not None:
            v = verify_rejection(p, prop.q[s, :K], cand[s], n_cand[s], u[s, :K], u_pos[s, : K + 1])
        else:
            v = verify_match(p, cand[s], n_cand[s], u_pos[s, : K + 1])
        verdict.num_accepted[s] = v.num_accepted
        verdict.next_token[s] = v.next_token
    return verdict


def decode_step(
    target: PreTrainedModel,
    batch: SubBatch,
    emit: Emit,
    k_auto: int | None = None,
    lock: list[int] | None = None,
) -> StepStats:
    """propose -> verify -> accept -> commit for every row of the sub-batch.

    k_auto: the K an adaptive controller chose for this step (rows with spec.adaptive use it);
    lock: lockstep group ids ([B], from `lockstep.groups`) to clip acceptance by, or None."""
    rows = batch.rows
    dev = batch.kv.mask.device
    ks = [r.budget(r.spec.step_k(k_auto, r.sampling.seed is not None)) for r in rows]
    K = max(ks)
    warp = batch.warp
    sampled = not bool(warp.greedy.all())
    # draft sampling [B, K] and acceptance [B, K] uniforms; the emitted positions' own [B, K + 1]
    u = (
        draw_uniforms([r.generator for r in rows], 2 * K, dev)
        if sampled and batch.method == "draft"
        else None
    )
    u_pos = None
    if sampled:
        u_pos = position_uniforms([r.stream for r in rows], [r.num_generated for r in rows], K + 1, dev)
    # 1. propose
    t0 = time.perf_counter()
    prop = batch.proposer.propose(rows, ks, warp, u[:, :K] if u is not None else None)
    t1 = time.perf_counter()
    # 2. verify: one target forward over each row's pending token and its candidates
    fed = [[r.tokens[-1]] + c for r, c in zip(rows, prop.tokens, strict=True)]
    hidden = None
    if batch.proposer.needs_hidden:  # Medusa heads read the newest hidden state (plain steps too)
        logits, hidden = batch.kv.forward(target, fed, hidden=True)  # [B, T, V], [B, T, H]
    else:
        logits = batch.kv.forward(target, fed)  # [B, T, V]
    # 3. accept
    verdict = _accept(logits, prop, warp, u[:, K:] if u is not None else None, u_pos)
    accepted = verdict.num_accepted.tolist()  # the target's verdict, before any lockstep clip
    if lock is not None and K:
        n_t, nxt_t, _ = lockstep.clip(verdict.num_accepted, verdict.next_token, prop.tokens, lock)
        verdict = Verdict(n_t, nxt_t)
    n, nxt = verdict.num_accepted.tolist(), verdict.next_token.tolist()
    # 4. commit: keep the pending token and the accepted candidates in both caches
    T = logits.shape[1]
    batch.kv.rollback(torch.arange(T, device=dev)[None, :] <= verdict.num_accepted[:, None])  # [B, T]
    batch.proposer.commit(n, hidden)
    t2 = time.perf_counter()
    stats = StepStats(
        batch.method, "decode", len(rows), propose_s=t1 - t0, verify_s=t2 - t1, sync_s=prop.sync_s, k=K,
        lockstep=lock is not None and bool(k_auto),
    )  # fmt: skip
    stats.forwards = batch.proposer.drain_forwards() + batch.kv.drain()
    drafted = [len(c) for c in prop.tokens]
    emitted = [c[:a] + [tok] for c, a, tok in zip(prop.tokens, n, nxt, strict=True)]
    record_step(stats, rows, drafted, accepted, [1 + d for d in drafted], emitted, emit, kept=n)
    return stats


def record_step(
    stats: StepStats,
    rows: list[Row],
    drafted: list[int],
    accepted: list[int],
    verified: list[int],
    emitted: list[list[int]],
    emit: Emit,
    kept: list[int] | None = None,
) -> None:
    """Per-position and per-request counters of a decode step, then each row's tokens out.

    Per row: candidates it could accept, how many the target accepted, tokens the target verified
    for it, the tokens it emits (accepted + recovered/bonus; stops may cut them), and how many of
    the accepted it kept (a lockstep clip drops the rest; None: all)."""
    K = stats.k
    stats.drafted_per_position = [sum(d > j for d in drafted) for j in range(K)]
    stats.accepted_per_position = [sum(a > j for a in accepted) for j in range(K)]
    stats.reached_per_position = [
        sum(d > j and a >= j for d, a in zip(drafted, accepted, strict=True)) for j in range(K)
    ]
    kept = accepted if kept is None else kept
    for row, d, a, k, v, toks in zip(rows, drafted, accepted, kept, verified, emitted, strict=True):
        row.stats.target_forwards += 1
        row.stats.batch_size_sum += len(rows)
        row.stats.decode_steps += 1
        row.stats.k_sum += d
        row.stats.draft_tokens += d
        row.stats.accepted_tokens += a
        stats.tokens_verified += v
        stats.draft_tokens += d
        stats.accepted_tokens += a
        row.stats.dropped_tokens += a - k
        stats.dropped_tokens += a - k
        out = row.emit(toks)
        stats.emitted_tokens += len(out)
        emit(row, out)
