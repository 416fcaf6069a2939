"""Prefix caching: prompts that start like an earlier prompt skip the forward over the shared part.

A prefill keeps each prompt's keys and values (all but the last prompt token, which must always be
fed: its logits give the first generated token). A later prompt looks up the longest stored prefix
of itself, at a block boundary (every BLOCK tokens) or of its whole length minus one, and is
prefilled from there: its cached columns go into the joining rows' cache, and the forward feeds
only the rest. Keys depend only on positions 0..n-1 of the same tokens (prompts always start at
position 0), so the logits are those of a full prefill, up to float rounding of a different
batch shape. This is what vLLM's automatic prefix caching and TGI's prefix cache do, here over
whole entries in LRU order rather than paged blocks.

One cache per model (the target's, the draft's); bounded in bytes, least recently used first out.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from specserve.decoding.cache import GrowingCache, GrowingLayer, layers
from specserve.decoding.kv import KVState

log = logging.getLogger(__name__)

BLOCK = 16  # shared prefixes are found at multiples of this many tokens (and at whole prompts)


@dataclass
class Entry:
    tokens: tuple[int, ...]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [H, n, D]
    nbytes: int
    blocks: list[int]  # chained hashes of its whole blocks (`block_hashes`)


def block_hashes(tokens: list[int] | tuple[int, ...], n: int) -> list[int]:
    """Chained hashes of the whole BLOCK-token blocks within tokens[:n]: block i's hash covers
    blocks 0..i, so a prefix of any length is looked up in O(its length), as vLLM's blocks are."""
    out, h = [], 0
    for end in range(BLOCK, n + 1, BLOCK):
        h = hash((h, tuple(tokens[end - BLOCK : end])))
        out.append(h)
    return out


@dataclass
class PrefixCache:
    capacity_bytes: int
    entries: OrderedDict[tuple[int, ...], Entry] = field(default_factory=OrderedDict)  # LRU order
    holders: dict[int, dict[tuple[int, ...], None]] = field(default_factory=dict)  # block hash ->
    # the entries holding that prefix (an ordered set: the newest last)
    nbytes: int = 0

    def lookup(self, tokens: list[int]) -> tuple[Entry | None, int]:
        """The entry holding the longest cached prefix of tokens[:-1], and that prefix's length."""
        whole = len(tokens) - 1
        key = tuple(tokens[:whole])
        if whole and key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key], whole
        hashes = block_hashes(tokens, whole)
        for i in range(len(hashes) - 1, -1, -1):
            n = (i + 1) * BLOCK
            for held in reversed(self.holders.get(hashes[i], {})):
                if held[:n] == key[:n]:  # a hash collision must not pass for a hit
                    self.entries.move_to_end(held)
                    return self.entries[held], n
        return None, 0

    def prepare(self, model, seqs: list[list[int]], role: str = "target") -> tuple[KVState, list[list[int]]]:
        """A cache for new rows holding their cached prefixes, and what is left to feed per row.

        Row b's prefix fills its columns 0..n_b-1; the columns up to the longest prefix are holes
        for it (a row with no cached prefix has only holes there)."""
        found = [self.lookup(s) for s in seqs]
        width = max(n for _, n in found)
        kv = KVState.empty(model, len(seqs), role=role)
        if width == 0:
            return kv, seqs
        entry = next(e for e, n in found if n)
        dev = kv.mask.device
        kv.cache = GrowingCache(model.config)
        kv.cache.layers = [GrowingLayer() for _ in entry.kv]
        for i, layer in enumerate(kv.cache.layers):
            k0 = entry.kv[i][0]  # [H, n, D]
            keys = k0.new_zeros(len(seqs), k0.shape[0], width, k0.shape[2])  # [B, H, width, D]
            values = torch.zeros_like(keys)
            for b, (e, n) in enumerate(found):
                if n:
                    keys[b, :, :n], values[b, :, :n] = e.kv[i][0][:, :n], e.kv[i][1][:, :n]
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        seen = torch.tensor([n for _, n in found], device=dev)  # [B]
        kv.mask = torch.arange(width, device=dev)[None, :] < seen[:, None]  # [B, width]
        kv.seen = seen
        kv.dense = bool(kv.mask.all())
        return kv, [s[n:] for s, (_, n) in zip(seqs, found, strict=True)]

    def store(self, kv: KVState, seqs: list[list[int]]) -> None:
        """Keep each row's keys and values for all but its last token (rows of a fresh prefill)."""
        cache_layers = layers(kv.cache)
        for b, s in enumerate(seqs):
            key = tuple(s[:-1])
            if not key or key in self.entries:
                continue
            nbytes = sum(2 * la.keys[b, :, :1].nbytes * len(key) for la in cache_layers)
            if nbytes > self.capacity_bytes:
                continue  # (sized before copying: a prompt too long to keep costs nothing)
            while self.nbytes + nbytes > self.capacity_bytes:
                self._evict()
            cols = kv.mask[b].nonzero().squeeze(1)[: len(key)]  # [n] its valid columns, in order
            entry_kv = [(la.keys[b][:, cols], la.values[b][:, cols]) for la in cache_layers]  # copies
            entry = Entry(key, entry_kv, nbytes, block_hashes(key, len(key)))
            self.entries[key] = entry
            self.nbytes += nbytes
            for h in entry.blocks:
                self.holders.setdefault(h, {})[key] = None

    def _evict(self) -> None:
        key, entry = self.entries.popitem(last=False)
        self.nbytes -= entry.nbytes
        for h in entry.blocks:  # other entries holding the same prefix still answer for it
            held = self.holders[h]
            del held[key]
            if not held:
                del self.holders[h]
        log.debug("prefix cache: evicted a %d-token prompt", len(key))


def prefill_kv(model, seqs: list[list[int]], prefix: PrefixCache | None, role: str = "target", hidden=False):
    """A fresh cache for new rows with their prompts fed, from their cached prefixes where a prefix
    cache is given (which then keeps these prompts). Returns the cache, the last-token output of
    `KVState.forward` (logits, or (logits, hidden)), and the tokens fed per row."""
    if prefix is None:
        kv, fed = KVState.empty(model, len(seqs), role=role), seqs
    else:
        kv, fed = prefix.prepare(model, seqs, role)
    out = kv.forward(model, fed, logits="last", hidden=hidden)
    if prefix is not None:
        prefix.store(kv, seqs)
    return kv, out, fed
