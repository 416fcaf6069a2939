"""Acceptance scenario tables with hand-built target/draft distributions."""

from __future__ import annotations

import pytest
import torch

from specserve.decoding.acceptance import verify_greedy, verify_match, verify_rejection

V = 5


def onehot_logits(tokens: list[int]) -> torch.Tensor:
    """[T] target argmax tokens -> [1, T, V] logits peaked on them."""
    x = torch.full((1, len(tokens), V), -10.0)
    x[0, torch.arange(len(tokens)), torch.tensor(tokens)] = 10.0
    return x


GREEDY_TABLE = [
    # name, target argmax over T positions, candidates, expected accepted, expected next token
    ("perfect match + bonus", [1, 2, 3, 4], [1, 2, 3], 3, 4),
    ("early mismatch -> recovered", [1, 2, 3, 4], [1, 0, 3], 1, 2),
    ("first mismatch", [1, 2, 3, 4], [0, 2, 3], 0, 1),
    ("empty proposal = plain step", [3], [], 0, 3),
    ("all accepted, short proposal", [1, 2, 3, 4], [1, 2], 2, 3),
]


@pytest.mark.parametrize("name,argmax,cands,n,nxt", GREEDY_TABLE, ids=[r[0] for r in GREEDY_TABLE])
def test_greedy_table(name, argmax, cands, n, nxt):
    K = len(argmax) - 1
    c = torch.tensor([cands + [-1] * (K - len(cands))]).view(1, K)
    v = verify_greedy(onehot_logits(argmax).argmax(-1), c, torch.tensor([len(cands)]))
    assert (v.num_accepted.item(), v.next_token.item()) == (n, nxt)


def test_greedy_batched_rows_are_independent():
    argmax = torch.tensor([[1, 2, 3], [4, 4, 4], [0, 1, 2]])
    cands = torch.tensor([[1, 2], [4, 0], [-1, -1]])
    v = verify_greedy(argmax, cands, torch.tensor([2, 2, 0]))
    assert v.num_accepted.tolist() == [2, 1, 0]
    assert v.next_token.tolist() == [3, 4, 0]


def test_rejection_accepts_when_p_equals_q():
    p = torch.softmax(torch.randn(1, 3, V, generator=torch.Generator().manual_seed(0)), -1)
    q = p[:, :2].clone()
    v = verify_rejection(
        p, q, torch.tensor([[1, 3]]), torch.tensor([2]), torch.tensor([[0.999, 0.999]]), torch.tensor([0.5])
    )
    assert v.num_accepted.item() == 2  # p/q = 1 > u always: bonus drawn from p at position 2


def test_rejection_rejects_token_target_excludes_and_recovers_from_residual():
    p = torch.tensor([[[0.0, 0.5, 0.5, 0.0, 0.0], [0.2] * 5]])  # [1, T=2, V]
    q = torch.tensor([[[0.5, 0.5, 0.0, 0.0, 0.0]]])  # draft proposed token 0, which p never emits
    for u_next, expected in [(0.0, 2), (0.99, 2)]:  # residual = max(0, p - q) = all mass on token 2
        v = verify_rejection(
            p, q, torch.tensor([[0]]), torch.tensor([1]), torch.tensor([[0.0]]), torch.tensor([u_next])
        )
        assert (v.num_accepted.item(), v.next_token.item()) == (0, expected)


def test_rejection_acceptance_probability_is_p_over_q():
    p = torch.tensor([[[0.2, 0.8, 0, 0, 0], [0.2] * 5]])
    q = torch.tensor([[[0.8, 0.2, 0, 0, 0]]])  # p/q at token 0 = 0.25
    accept = [
        verify_rejection(
            p, q, torch.tensor([[0]]), torch.tensor([1]), torch.tensor([[u]]), torch.tensor([0.0])
        ).num_accepted.item()
        for u in (0.2, 0.24, 0.26, 0.9)
    ]
    assert accept == [1, 1, 0, 0]


def test_match_sampling_follows_the_sampled_path():
    p = torch.zeros(1, 3, V)
    p[0, 0, 1] = p[0, 1, 2] = p[0, 2, 4] = 1.0  # deterministic p: 1, 2, then 4
    for cands, n, nxt in [([1, 2], 2, 4), ([1, 3], 1, 2), ([0, 2], 0, 1)]:
        v = verify_match(p, torch.tensor([cands]), torch.tensor([2]), torch.full((1, 3), 0.5))
        assert (v.num_accepted.item(), v.next_token.item()) == (n, nxt)
