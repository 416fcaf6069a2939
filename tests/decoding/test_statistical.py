"""Speculative sampling reproduces the target distribution (chi-square, small vocabulary).

The joint of the first four generated tokens is compared with the target's exact joint, enumerated
from its logits. Token 1 comes from the prefill; tokens 2-4 from a speculative step with K = 2 (each
an accepted candidate, a recovered token or the bonus), so every acceptance branch counts.
Medusa trees are verified the same way (its draft tokens count the tree depth per step); EAGLE
chains by rejection against the head's q, or by matching for seeded rows.
Each test also checks its own power: the same samples against the *draft's* joint must fail.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare
from scripted import Always
from tiny_models import eagle_at, random_eagle
from transformers import LlamaConfig, LlamaForCausalLM

from specserve.decoding import Engine, SamplingParams, SpecParams
from specserve.decoding.sampling import Warp, warp_probs
from specserve.models.draft_vocab import restrict_model
from specserve.models.medusa import MedusaConfig, MedusaHeads

V, N, NEW = 3, 6000, 4
PROMPT = [0, 1, 2, 0, 1, 2, 0, 1]  # repeats, so prompt lookup has candidates


def _model(seed: int, layers: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, eos_token_id=None,
    )  # fmt: skip
    m = LlamaForCausalLM(cfg).double().eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(4.0)  # away from uniform, so p and q differ visibly
    return m


@pytest.fixture(scope="module")
def pair():
    return _model(10, 2), _model(11, 1)


@pytest.fixture(scope="module")
def heads(pair):
    torch.manual_seed(12)
    cfg = MedusaConfig(num_heads=3, hidden_size=32, vocab_size=V)
    h = MedusaHeads(cfg).double().eval()
    with torch.no_grad():
        for p in h.parameters():
            p.normal_(0, 0.5)
    return h


def exact_joint(model, sampling: SamplingParams) -> torch.Tensor:
    """[V ** NEW] probabilities of each continuation under the warped model."""
    warp = Warp.from_params([sampling], torch.device("cpu"))
    joint = torch.zeros((V,) * NEW, dtype=torch.float64)
    with torch.no_grad():
        for seq in itertools.product(range(V), repeat=NEW):
            logits = model(torch.tensor([PROMPT + list(seq[:-1])])).logits[
                :, len(PROMPT) - 1 :
            ]  # [1, NEW, V]
            probs = warp_probs(logits, warp.select(torch.tensor([0])))[0]  # [NEW, V]
            joint[seq] = torch.prod(probs[torch.arange(NEW), torch.tensor(seq)])
    return joint.flatten()


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    if bool((counts[probs == 0] > 0).any()):
        return 0.0  # an outcome the distribution cannot produce
    expected = probs * counts.sum()
    big = expected >= 5  # pool the rare cells into one bin
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    keep = exp > 0
    return float(chisquare(obs[keep].numpy(), exp[keep].numpy()).pvalue)


def sample_joint(
    target, draft, method: str, base: SamplingParams, heads=None, compile="off", eagle=None, seeded=True,
    greedy: int = 0,
) -> torch.Tensor:  # fmt: skip
    """Counts of the N sampled rows' continuations. seeded: True, False, or "half" (every other
    sampled row); greedy: that many greedy rows spread among the sampled ones (each must continue
    as plain greedy decoding does)."""
    engine = Engine(target, draft, medusa=heads, eagle=eagle, max_batch_size=1000, compile=compile)
    sampling = [
        SamplingParams(
            max_new_tokens=NEW, temperature=base.temperature, top_k=base.top_k, top_p=base.top_p,
            seed=i if seeded is True or (seeded == "half" and i % 2) else None,
        )
        for i in range(N)
    ]  # fmt: skip
    every = N // greedy + 1 if greedy else 0
    for i in range(greedy):
        sampling.insert(i * every, SamplingParams(max_new_tokens=NEW))
    results = engine.generate([PROMPT] * len(sampling), sampling, SpecParams(method, 2))
    assert sum(r.stats.draft_tokens for r in results) >= 2 * len(results)  # two candidates per row
    if greedy:
        plain = Engine(target).generate([PROMPT], SamplingParams(max_new_tokens=NEW), SpecParams())[0]
        assert all(r.token_ids == plain.token_ids for r, s in zip(results, sampling, strict=True) if s.greedy)
        results = [r for r, s in zip(results, sampling, strict=True) if not s.greedy]
    assert compile == "off" or (engine.compiled["target"].calls > 0 and engine.compiled["target"].enabled)
    idx = torch.tensor([sum(t * V ** (NEW - 1 - i) for i, t in enumerate(r.token_ids)) for r in results])
    return torch.bincount(idx, minlength=V**NEW).double()


@pytest.mark.parametrize(
    "method,sampling",
    [
        ("draft", SamplingParams(temperature=1.0)),
        ("draft", SamplingParams(temperature=0.8, top_k=3)),
        ("ngram", SamplingParams(temperature=1.0)),
        ("ngram", SamplingParams(temperature=1.2, top_p=0.9)),
        ("medusa", SamplingParams(temperature=1.0)),
        ("medusa", SamplingParams(temperature=0.7, top_k=2)),
    ],
)
def test_speculative_sampling_matches_target(pair, heads, method, sampling):
    target, draft = pair
    counts = sample_joint(target, draft, method, sampling, heads)
    p_joint = exact_joint(target, sampling)
    assert chi2_pvalue(counts, p_joint) > 1e-3
    # power: the draft's joint is rejected by the same samples (the test can fail)
    assert chi2_pvalue(counts, exact_joint(draft, sampling)) < 1e-6


@pytest.mark.parametrize("method", ["draft", "ngram", "medusa"])
def test_compiled_sampling_matches_target(pair, heads, method):
    """The same test through compiled decode steps (decoding/compiled.py)."""
    target, draft = pair
    sampling = SamplingParams(temperature=1.0)
    counts = sample_joint(target, draft, method, sampling, heads, compile="on")
    assert chi2_pvalue(counts, exact_joint(target, sampling)) > 1e-3
    assert chi2_pvalue(counts, exact_joint(draft, sampling)) < 1e-6


@pytest.mark.parametrize("seeded", [False, True])
def test_a_draft_with_a_reduced_vocabulary_samples_the_target(seeded):
    """A draft restricted to tokens 0 and 2 (models/draft_vocab.py): q is 0 on token 1, and the
    output still follows the target's p (rejection sampling; seeded rows: matching)."""
    target, draft = _model(10, 2), _model(11, 1)  # (a draft of its own: the pair's stays whole)
    restrict_model(draft, torch.tensor([0, 2]))
    sampling = SamplingParams(temperature=1.0)
    counts = sample_joint(target, draft, "draft", sampling, seeded=seeded)
    assert chi2_pvalue(counts, exact_joint(target, sampling)) > 1e-3
    assert chi2_pvalue(counts, exact_joint(_model(11, 1), sampling)) < 1e-6  # not the draft's joint


def test_seeded_draft_sampling_matches_target(pair):
    """Seeded draft rows (each its own seed) are matched, not rejection-sampled (decoding/step.py
    `_couple`): their tokens are plain sampling's, so across seeds they sample the target's joint.
    Under "auto" at K = 2, several rows a batch."""
    target, draft = pair
    engine = Engine(target, draft, max_batch_size=24)
    engine.policy = Always(2)
    sampling = [SamplingParams(max_new_tokens=NEW, temperature=1.0, seed=i) for i in range(N)]
    results = engine.generate([PROMPT] * N, sampling, SpecParams.parse("draft", "auto"))
    assert sum(r.stats.draft_tokens for r in results) >= N  # it did speculate
    idx = torch.tensor([sum(t * V ** (NEW - 1 - i) for i, t in enumerate(r.token_ids)) for r in results])
    counts = torch.bincount(idx, minlength=V**NEW).double()
    assert chi2_pvalue(counts, exact_joint(target, SamplingParams(temperature=1.0))) > 1e-3
    assert chi2_pvalue(counts, exact_joint(draft, SamplingParams(temperature=1.0))) < 1e-6


@pytest.mark.parametrize(
    "sampling,seeded,dtype",
    [
        (SamplingParams(temperature=1.0), False, None),  # rejection sampling against the head's q
        (SamplingParams(temperature=0.8, top_k=2), False, None),
        (SamplingParams(temperature=1.0), True, None),  # seeded rows: matched with the positions' uniforms
        (SamplingParams(temperature=1.0), False, torch.bfloat16),  # a head at another precision
        (SamplingParams(temperature=1.0), False, "half"),  # a reduced draft vocabulary: q = 0 off it
        (SamplingParams(temperature=1.0), True, "half"),
    ],
)
def test_eagle_sampling_matches_target(pair, sampling, seeded, dtype, tmp_path):
    target, draft = pair
    head = (
        random_eagle(target)
        if dtype in (None, "half")
        else eagle_at(random_eagle(target), target, dtype, tmp_path)
    )
    if dtype == "half":
        head.restrict(torch.arange(0, V, 2))
    counts = sample_joint(target, draft, "eagle", sampling, eagle=head, seeded=seeded)
    assert chi2_pvalue(counts, exact_joint(target, sampling)) > 1e-3
    assert chi2_pvalue(counts, exact_joint(draft, sampling)) < 1e-6


@pytest.mark.parametrize("method", ["draft", "eagle"])
def test_sampled_rows_among_greedy_ones_sample_the_target(pair, method):
    """A step's sampling work runs over its sampled rows only (q, uniforms, acceptance: [S]
    tensors, decoding/step.py): with greedy rows spread among them and seeded rows beside unseeded
    ones, every sampled row still follows p and every greedy row continues as plain greedy."""
    target, draft = pair
    head = random_eagle(target) if method == "eagle" else None
    sampling = SamplingParams(temperature=1.0)
    counts = sample_joint(target, draft, method, sampling, eagle=head, seeded="half", greedy=N // 2)
    assert chi2_pvalue(counts, exact_joint(target, sampling)) > 1e-3
    assert chi2_pvalue(counts, exact_joint(draft, sampling)) < 1e-6
