from __future__ import annotations

import torch

from specserve.decoding.params import SamplingParams
from specserve.decoding.sampling import Warp, draw_uniforms, sample, warp_probs


def _warp(**kw) -> Warp:
    return Warp.from_params([SamplingParams(**kw)], torch.device("cpu"))


def test_temperature_top_k_top_p():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.15, 0.1]]]))
    assert torch.allclose(warp_probs(logits, _warp(temperature=1.0)), torch.tensor([0.5, 0.25, 0.15, 0.1]))
    top2 = warp_probs(logits, _warp(temperature=1.0, top_k=2))[0, 0]
    assert torch.allclose(top2, torch.tensor([2 / 3, 1 / 3, 0, 0]))
    # top_p=0.7: 0.5 alone is short of 0.7, 0.5 + 0.25 reaches it -> keep two
    assert torch.allclose(warp_probs(logits, _warp(temperature=1.0, top_p=0.7))[0, 0], top2)
    assert torch.allclose(
        warp_probs(logits, _warp(temperature=1.0, top_p=0.5))[0, 0], torch.tensor([1.0, 0, 0, 0])
    )
    cold = warp_probs(logits, _warp(temperature=0.5))[0, 0]
    assert torch.allclose(cold, torch.tensor([0.25, 0.0625, 0.0225, 0.01]) / 0.345)


def test_rows_keep_their_own_filters():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.15, 0.1]], [[0.5, 0.25, 0.15, 0.1]]]))
    w = Warp.from_params(
        [SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=1.0)], torch.device("cpu")
    )
    probs = warp_probs(logits, w)
    assert probs[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert torch.allclose(probs[1, 0], torch.tensor([0.5, 0.25, 0.15, 0.1]))


def test_inverse_cdf_never_picks_zero_probability():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0])
    u = torch.linspace(0, 0.999999, 101)
    picks = sample(probs.expand(101, -1), u)
    assert set(picks.tolist()) == {1, 3}
    assert (picks[u < 0.5] == 1).all() and (picks[u >= 0.5] == 3).all()


def test_uniforms_come_from_each_rows_generator():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    g3 = torch.Generator().manual_seed(8)
    u = draw_uniforms([g1, g3, g2], 3, torch.device("cpu"))
    assert u.shape == (3, 3)
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])
