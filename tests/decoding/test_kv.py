"""KV bookkeeping: holes, compaction, row selection and joining leave every logit unchanged."""

from __future__ import annotations

import torch

from specserve.decoding.kv import KVState


def _ref_logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1]


def test_holes_compaction_select_extend_keep_logits_exact(tiny):
    model = tiny["target"].model
    seqs = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    kv = KVState.empty(model, 3)
    with torch.no_grad():
        kv.forward(model, seqs, logits="last")
        # feed 4 tokens per row, reject a different number in each row -> holes
        fed = [[20, 21, 22, 23], [30, 31, 32, 33], [40, 41, 42, 43]]
        kv.forward(model, fed)
        kv.rollback(torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool))
        for s, f, n in zip(seqs, fed, (2, 1, 3), strict=True):
            s.extend(f[:n])
        assert kv.seen.tolist() == [len(s) for s in seqs]
        assert kv.num_columns > max(kv.seen.tolist())  # holes remain in the middle
        kv.compact()
        assert kv.num_columns == max(kv.seen.tolist())
        # a new row joins, the first row leaves
        new = KVState.empty(model, 1)
        new.forward(model, [[50, 51, 52, 53, 54, 55, 56]], logits="last")
        kv.extend(new)
        kv.select(torch.tensor([1, 2, 3]))
        seqs = [seqs[1], seqs[2], [50, 51, 52, 53, 54, 55, 56]]
        nxt = [[60], [61], [62]]
        out = kv.forward(model, nxt, logits="last")  # [3, V]
    for row, (s, n) in enumerate(zip(seqs, nxt, strict=True)):
        assert torch.allclose(out[row], _ref_logits(model, s + n), atol=1e-10)
    assert kv.seen.tolist() == [len(s) + 1 for s in seqs]


def test_trailing_holes_are_cropped(tiny):
    model = tiny["target"].model
    kv = KVState.empty(model, 2)
    with torch.no_grad():
        kv.forward(model, [[1, 2, 3], [4, 5, 6]], logits="last")
        kv.forward(model, [[7, 8, 9], [7, 8, 9]])
        kv.rollback(torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool))
    assert kv.num_columns == 5  # the last column is a hole in every row: gone
    assert kv.nbytes() > 0


def test_rows_leave_and_join_in_place_over_poisoned_spare_capacity(tiny):
    """Rows leave from the middle and join longer and shorter than the cache, in place; the spare
    capacity they land in holds NaN beforehand, so any column left unwritten would show."""
    model = tiny["target"].model
    seqs = [[1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12]]
    kv = KVState.empty(model, 4)

    def poison() -> None:
        for layer in kv.cache.layers:
            b, n = layer._b, layer._kn
            for buf in (layer._k, layer._v):
                buf[b:] = float("nan")
                buf[:, :, n:] = float("nan")

    def join(new_seqs: list[list[int]]) -> None:
        new = KVState.empty(model, len(new_seqs))
        new.forward(model, new_seqs, logits="last")
        kv.extend(new)
        seqs.extend(new_seqs)

    with torch.no_grad():
        kv.forward(model, seqs, logits="last")
        for layer in kv.cache.layers:  # room for rows and columns without a new buffer
            layer._reserve(16, 64)
        buffers = [layer._k.data_ptr() for layer in kv.cache.layers]
        poison()
        kv.select(torch.tensor([0, 2, 3]))  # the second row leaves: only the rows behind it move
        del seqs[1]
        poison()
        join([[20, 21, 22, 23, 24, 25, 26, 27]])  # longer than the cache: new hole columns for the rest
        poison()
        join([[30]])  # shorter: hole columns for the joiner
        kv.select(torch.tensor([1, 2, 3, 4]))
        del seqs[0]
        assert [layer._k.data_ptr() for layer in kv.cache.layers] == buffers  # all in place
        nxt = [[40], [41], [42], [43]]
        out = kv.forward(model, nxt, logits="last")  # [4, V]
    assert torch.isfinite(out).all()
    for row, (s, n) in enumerate(zip(seqs, nxt, strict=True)):
        assert torch.allclose(out[row], _ref_logits(model, s + n), atol=1e-10)
