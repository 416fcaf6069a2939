"""One engine step as plain functions: prefill new rows, or propose -> verify -> accept -> commit
(the one decode step of every method, over a chain of candidates or a token tree)."""

from __future__ import annotations

import time

import torch
from transformers import PreTrainedModel

from specserve.decoding.acceptance import (
    Verdict,
    tree_greedy,
    tree_match,
    verify_greedy,
    verify_match,
    verify_rejection,
)
from specserve.decoding.batch import SubBatch
from specserve.decoding.logprobs import token_logprobs
from specserve.decoding.prefix_cache import PrefixCache, prefill_kv
from specserve.decoding.proposer import Emit, Proposal
from specserve.decoding.row import Row
from specserve.decoding.sampling import Warp, draw_tokens, draw_uniforms, position_uniforms, warp_probs
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
    want = "all" if batch.proposer.prompt_hidden else batch.proposer.needs_hidden
    kv, out, fed = prefill_kv(target, seqs, prefix, hidden=want)
    logits, hidden = out if want else (out, None)  # [B_new, V], [B_new, H] (or [B_new, T, H])
    if want == "all":  # each row's states at the positions it fed
        hidden = [hidden[b, : len(f)] for b, f in enumerate(fed)]
    cached = [len(s) - len(f) for s, f in zip(seqs, fed, strict=True)]  # (before emit grows r.tokens)
    warp = _warp(new, logits.device)
    u = None  # [S] the sampled rows' uniforms of generated position 0
    if warp.any_sampled:
        streams = [new[i].stream for i in warp.sampled.tolist()]
        u = position_uniforms(streams, [0] * len(streams), 1, logits.device)[:, 0]
    first, _ = draw_tokens(logits, warp, u)  # [B_new]
    firsts = first.tolist()
    lps = token_logprobs(logits[:, None], new, warp, [[t] for t in firsts], None)
    batch.kv.extend(kv)
    batch.proposer.admit(new, hidden)
    batch.join(new)
    now = time.perf_counter()
    for row, tok, c, lp in zip(new, firsts, cached, lps, strict=True):
        row.stats.cached_tokens = c
        row.admitted = row.admitted or t0
        row.stats.queue_time_s = row.admitted - row.arrival
        row.stats.target_forwards += 1
        row.stats.batch_size_sum += len(new)
        emit(row, row.emit([tok], lp))
        row.stats.ttft_s = now - row.arrival
    stats = StepStats(
        batch.method, "prefill", len(new), tokens_verified=sum(r.prompt_len for r in new) - sum(cached),
        prefill_s=now - t0, cached_tokens=sum(cached),
    )  # fmt: skip
    stats.forwards = batch.drain_forwards()
    return stats


def _verify(
    target: PreTrainedModel, batch: SubBatch, prop: Proposal
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One target forward over each row's pending token and its candidates: a chain right-padded
    with holes, or a tree under a 4D tree mask (node 0: the pending token). Returns logits
    [B, T, V] and, when the proposer reads them, last hidden states [B, T, H]."""
    rows, kv, need = batch.rows, batch.kv, batch.proposer.needs_hidden
    if prop.tree is not None:
        logits, hidden = kv.forward_tree(target, _tree_ids(rows, prop, kv.mask.device), prop.tree)
        return logits, hidden if need else None
    fed = [[r.tokens[-1]] + c for r, c in zip(rows, prop.tokens, strict=True)]
    out = kv.forward(target, fed, hidden=need)
    return out if need else (out, None)


def _tree_ids(rows: list[Row], prop: Proposal, dev: torch.device) -> torch.Tensor:
    """[B, N] node tokens of every row's tree, node 0 its pending token."""
    pending = torch.tensor([[r.tokens[-1]] for r in rows], device=dev)  # [B, 1]
    return torch.cat([pending, torch.tensor(prop.tokens, device=dev).view(len(rows), -1)], dim=1)


def _positions(rows: list[Row], n: int, dev: torch.device) -> torch.Tensor:
    """[S, n] each (sampled) row's uniforms of the next n generated positions."""
    return position_uniforms([r.stream for r in rows], [r.num_generated for r in rows], n, dev)


def _couple(rows: list[Row], u: torch.Tensor, u_pos: torch.Tensor) -> torch.Tensor | None:
    """Seeded rows of a draft (rows: the sampled ones): candidate j is drawn from q with the uniform
    the target draws generated position j with (u_pos [S, K]; in place: u [S, 2K], its first K
    columns), and accepted only where p's draw with it equals it (`verify_match`): every emitted
    token is then the one plain decoding samples with that seed, whatever K, batch or draft.
    (Rejection sampling accepts more, but its output depends on K and on q.) Returns [S] bool, the
    coupled rows, or None when none is."""
    seeded = [r.sampling.seed is not None for r in rows]
    if not any(seeded):
        return None
    mask = torch.tensor(seeded, device=u.device)  # [S]
    K = u_pos.shape[1]
    u[:, :K] = torch.where(mask[:, None], u_pos, u[:, :K])
    return mask


def _accept_chain(
    logits: torch.Tensor,
    prop: Proposal,
    warp: Warp,
    u: torch.Tensor | None,
    u_pos: torch.Tensor | None,
    coupled: torch.Tensor | None = None,
) -> Verdict:
    """logits [B, T, V]; for the sampled rows (`warp.sampled`, S of them): u [S, K] acceptance
    uniforms, u_pos [S, T] uniforms of the positions the step may emit (both None when every row
    is greedy), coupled [S]: rows whose draft candidates were drawn with u_pos (`_couple`),
    verified by matching."""
    dev = logits.device
    K = logits.shape[1] - 1
    if K == 0:  # a plain step: each row's argmax, or its sample of p (matching with no candidates)
        nxt, _ = draw_tokens(logits[:, 0], warp, u_pos[:, 0] if u_pos is not None else None)  # [B]
        return Verdict(torch.zeros(logits.shape[0], dtype=torch.long, device=dev), nxt)
    n_cand = torch.tensor([len(t) for t in prop.tokens], device=dev)  # [B]
    cand = torch.tensor([t + [-1] * (K - len(t)) for t in prop.tokens], dtype=torch.long, device=dev).view(
        len(prop.tokens), K
    )  # [B, K]
    verdict = verify_greedy(logits.argmax(-1), cand, n_cand)
    if u_pos is None:
        return verdict
    s = warp.sampled  # [S]
    p = warp_probs(logits.index_select(0, s), warp.of_sampled)  # [S, T, V] (2x indexing's speed)
    v = None  # each rule runs only where some row needs it
    if prop.q is None or coupled is not None:
        v = verify_match(p, cand[s], n_cand[s], u_pos[:, : K + 1])
    if prop.q is not None and (coupled is None or not bool(coupled.all())):
        r = verify_rejection(p, prop.q[:, :K], cand[s], n_cand[s], u[:, :K], u_pos[:, : K + 1])
        if v is not None:  # the coupled rows by matching, the others by rejection
            r.num_accepted = torch.where(coupled, v.num_accepted, r.num_accepted)
            r.next_token = torch.where(coupled, v.next_token, r.next_token)
        v = r
    verdict.num_accepted[s] = v.num_accepted
    verdict.next_token[s] = v.next_token
    return verdict


def _accept_tree(
    logits: torch.Tensor, ids: torch.Tensor, prop: Proposal, caps: list[int], warp: Warp, u_pos
) -> Verdict:
    """Greedy rows: the longest agreeing root path within each row's cap; sampled rows: samples of
    p followed down the tree (match sampling). logits [B, N, V], ids [B, N], u_pos [S, D + 1] (the
    sampled rows')."""
    tree, dev = prop.tree, logits.device
    if prop.q is not None:
        raise NotImplementedError("sampling a tree drawn from q needs a multi-draft acceptance rule")
    verdict = tree_greedy(ids, logits.argmax(-1), tree, torch.tensor(caps, device=dev))
    s = warp.sampled.tolist()
    if s:
        p = warp_probs(logits.index_select(0, warp.sampled), warp.of_sampled)  # [S, N, V]
        ids_list, D = ids.tolist(), tree.max_depth
        for i, b in enumerate(s):  # depth d emits generated position num_generated + d
            nodes, nxt = tree_match(ids_list[b], p[i], u_pos[i], tree, caps[b])
            verdict.path[b] = torch.tensor([0, *nodes] + [-1] * (D - len(nodes)), device=dev)
            verdict.num_accepted[b], verdict.next_token[b] = len(nodes), nxt
    return verdict


def decode_step(target: PreTrainedModel, batch: SubBatch, emit: Emit, k_auto: int | None = None) -> StepStats:
    """propose -> verify -> accept -> commit for every row of the sub-batch, a chain or a tree.

    k_auto: the K the policy chose for this step (rows with spec.adaptive use it; a tree is cut to
    that depth)."""
    rows, proposer = batch.rows, batch.proposer
    B, dev = len(rows), batch.kv.mask.device
    ks = [r.budget(r.spec.step_k(k_auto)) for r in rows]
    K = max(ks)
    warp = batch.warp
    # the sampled rows' (only: a greedy row costs nothing here) draft sampling [S, K] and
    # acceptance [S, K] uniforms, from each row's own generator; a seeded row's draft samples with
    # its position uniforms instead (`_couple`)
    sampled = [rows[i] for i in warp.sampled.tolist()]
    u = coupled = u_pos = None
    if sampled and proposer.draws_from_q:  # a chain: the step may emit positions 0..K
        u = draw_uniforms([r.generator for r in sampled], 2 * K, dev)
        u_pos = _positions(sampled, K + 1, dev)
        coupled = _couple(sampled, u, u_pos[:, :K])
    # 1. propose
    t0 = time.perf_counter()
    prop = proposer.propose(rows, ks, warp, u[:, :K] if u is not None else None)
    t1 = time.perf_counter()
    tree = prop.tree
    depth = tree.max_depth if tree is not None else K  # the most candidates a row may accept
    # 2. verify
    logits, hidden = _verify(target, batch, prop)  # [B, T, V], [B, T, H] or None
    T = logits.shape[1]
    # 3. accept: row b keeps its pending token and n[b] candidates along a path
    if sampled and u_pos is None:  # uniforms by generated position: seeded output does not depend on K
        u_pos = _positions(sampled, depth + 1, dev)
    if tree is None:
        caps, cand = [len(c) for c in prop.tokens], prop.tokens
        verdict = _accept_chain(logits, prop, warp, u[:, K:] if u is not None else None, u_pos, coupled)
    else:
        ids = _tree_ids(rows, prop, dev)  # [B, N]
        caps = [min(k, depth) for k in ks]
        verdict = _accept_tree(logits, ids, prop, caps, warp, u_pos)
        cand = ids.gather(1, verdict.path.clamp(min=0))[:, 1:].tolist()  # [B, D] tokens along the path
    n_t = verdict.num_accepted
    n, nxt = n_t.tolist(), verdict.next_token.tolist()
    # 4. commit: the target's cache keeps each row's path, and the proposer hears what was kept
    if tree is None:
        batch.kv.rollback(torch.arange(T, device=dev)[None, :] <= n_t.to(dev)[:, None])  # [B, T]
    else:
        batch.kv.rollback(_on_path(verdict.path, n_t.to(dev), T))
        if hidden is not None:  # the hidden states along each row's path, as a chain's
            hidden = hidden.gather(1, verdict.path.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
    proposer.commit(n, hidden)
    t2 = time.perf_counter()
    stats = StepStats(
        batch.method, "decode", B, propose_s=t1 - t0, verify_s=t2 - t1, sync_s=prop.sync_s, k=depth,
    )  # fmt: skip
    stats.forwards = prop.forwards + batch.drain_forwards()
    emitted = [c[:a] + [tok] for c, a, tok in zip(cand, n, nxt, strict=True)]
    verified = [T] * B if tree is not None else [1 + c for c in caps]
    lps = token_logprobs(logits, rows, warp, emitted, verdict.path if tree is not None else None)
    record_step(stats, rows, caps, n, verified, emitted, emit, logprobs=lps)
    return stats


def _on_path(path: torch.Tensor, n: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """[B, N] bool: the nodes of path[b, :n[b] + 1] (path [B, D + 1] node indices, -1 padded)."""
    on = torch.arange(path.shape[1], device=path.device)[None, :] <= n[:, None]  # [B, D + 1]
    b, j = on.nonzero(as_tuple=True)
    keep = torch.zeros(path.shape[0], num_nodes, dtype=torch.bool, device=path.device)
    keep[b, path[b, j]] = True
    return keep


def record_step(
    stats: StepStats,
    rows: list[Row],
    drafted: list[int],
    accepted: list[int],
    verified: list[int],
    emitted: list[list[int]],
    emit: Emit,
    logprobs: list | None = None,
) -> None:
    """Per-position and per-request counters of a decode step, then each row's tokens out.

    Per row: candidates it could accept, how many the target accepted, tokens the target verified
    for it, the tokens it emits (accepted + recovered/bonus; stops may cut them), and the emitted
    tokens' logprobs (None for rows that did not ask)."""
    K = stats.k
    stats.drafted_per_position = [sum(d > j for d in drafted) for j in range(K)]
    stats.accepted_per_position = [sum(a > j for a in accepted) for j in range(K)]
    stats.accepted_per_row = list(accepted)
    stats.reached_per_position = [
        sum(d > j and a >= j for d, a in zip(drafted, accepted, strict=True)) for j in range(K)
    ]
    logprobs = logprobs or [None] * len(rows)
    for row, d, a, v, toks, lp in zip(rows, drafted, accepted, verified, emitted, logprobs, strict=True):
        row.stats.target_forwards += 1
        row.stats.batch_size_sum += len(rows)
        row.stats.decode_steps += 1
        row.stats.k_sum += d
        row.stats.draft_tokens += d
        row.stats.accepted_tokens += a
        stats.tokens_verified += v
        stats.draft_tokens += d
        stats.accepted_tokens += a
        out = row.emit(toks, lp)
        stats.emitted_tokens += len(out)
        emit(row, out)
