"""Training-loop pieces of the suite recipe: the wall-clock budget and the distillation pool's sampler."""

from __future__ import annotations

import numpy as np
import torch
from clock import FakeClock
from scipy.stats import chisquare
from transformers import LlamaForCausalLM

from specserve.models.suite import train as train_module
from specserve.models.suite.configs import ModelShape, TrainConfig
from specserve.models.suite.distill import sample_tokens
from specserve.models.suite.train import StepBudget, TokenWindows, lr_at, train_loop


def test_no_budget_keeps_the_configured_steps() -> None:
    budget = StepBudget(None, 500, start=0)
    assert [budget.plan(s, elapsed=1e9) for s in (0, 5, 25, 400)] == [500] * 4


def test_budget_shrinks_the_plan_from_the_probed_step_time() -> None:
    budget = StepBudget(10.0, 10_000, start=0)  # 0.1 s per step on a synthetic clock
    plans = [budget.plan(s, elapsed=0.1 * s) for s in range(30)]
    assert plans[:25] == [10_000] * 25
    # at step 25: 2.5 s spent, 7.5 s left, 8% kept for evaluations -> 69 more steps
    assert plans[25:] == [25 + 69] * 5 and budget.decided
    assert not budget.over(9.99) and budget.over(10.0)  # the caller ends the run there


def test_budget_never_lengthens_a_run() -> None:
    budget = StepBudget(1000.0, 40, start=0)
    assert all(budget.plan(s, elapsed=0.01 * s) == 40 for s in range(40))


def test_budgeted_run_ends_its_schedule_inside_the_budget(tmp_path, monkeypatch) -> None:
    FakeClock().install(monkeypatch, train_module)
    torch.manual_seed(0)
    model = LlamaForCausalLM(ModelShape(16, 1, 1, 32).llama_config(40, 64, 0, 0, 1))
    windows = TokenWindows(np.random.default_rng(0).integers(0, 40, 4000).astype(np.uint16), 16)
    cfg = TrainConfig(
        steps=10_000_000, batch_size=2, seq_len=16, lr=1e-3, warmup_steps=2, eval_every=10**9,
        eval_windows=2, ckpt_every=10**9, max_seconds=0.5,
    )  # fmt: skip
    res = train_loop(
        "t", model, cfg, lambda s: windows.batch(0, s, 2), windows.evenly(2), tmp_path, resume=False
    )
    assert 25 < res.steps < cfg.steps and res.planned_steps == res.steps
    last = res.history[-1]
    assert last["step"] == res.steps  # the last step evaluates, as an unbudgeted run's would
    # it ends on its plan, or, when a loaded machine slowed the steps after the probe, on the clock
    # a little before it (the last lr then belongs to the longer plan): either way the cosine ran
    # to its end, not cut off halfway
    assert last["lr"] >= lr_at(res.steps - 1, cfg, res.steps) - 1e-12
    assert last["lr"] < 0.2 * cfg.lr


def _tiny_run(tmp_path, **kw):
    torch.manual_seed(0)
    model = LlamaForCausalLM(ModelShape(16, 1, 1, 32).llama_config(40, 64, 0, 0, 1))
    windows = TokenWindows(np.random.default_rng(0).integers(0, 40, 4000).astype(np.uint16), 16)
    base = {"steps": 10_000_000, "batch_size": 2, "seq_len": 16, "lr": 1e-3, "warmup_steps": 2}
    cfg = TrainConfig(**(base | kw.pop("cfg")))
    res = train_loop("t", model, cfg, lambda s: windows.batch(0, s, 2), windows.evenly(2), tmp_path, **kw)
    return cfg, res, torch.load(tmp_path / "ckpt.pt", weights_only=False)["result"]


def test_budgeted_run_ends_on_an_evaluated_checkpointed_step(tmp_path, monkeypatch) -> None:
    """A periodic evaluation that spends the budget still leaves the last step evaluated and saved."""
    clock = FakeClock().install(monkeypatch, train_module)

    def slow_val(model, ids):
        clock.sleep(0.3)
        return torch.tensor(1.0)

    cfg = {"eval_every": 30, "eval_windows": 2, "ckpt_every": 7, "max_seconds": 0.5}
    _, res, saved = _tiny_run(tmp_path, cfg=cfg, val_loss_fn=slow_val, resume=False)
    assert res.planned_steps == res.steps == res.history[-1]["step"]
    assert saved["steps"] == res.steps and saved["planned_steps"] == res.steps


def test_resume_before_the_probe_probes_again(tmp_path, monkeypatch) -> None:
    FakeClock().install(monkeypatch, train_module)
    cfg = {"eval_every": 10**9, "eval_windows": 2, "ckpt_every": 5, "max_seconds": 0.5}
    _, first, saved = _tiny_run(tmp_path, cfg=cfg, stop_after=10)
    assert first.steps == 10 and saved["planned_steps"] == 0  # no plan was made yet: none is kept
    config, res, saved = _tiny_run(tmp_path, cfg=cfg)
    assert res.resumed_from == 10 and 35 < res.steps < config.steps
    assert saved["planned_steps"] == res.steps
    assert res.history[-1]["lr"] < 0.2 * config.lr  # the resumed run planned, and finished its cosine


def test_pool_sampler_draws_from_the_tempered_distribution() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5, -3.0])
    n, temperature = 20_000, 0.7
    g = torch.Generator().manual_seed(0)
    draws = sample_tokens(logits.expand(n, -1).clone(), temperature, g)  # [n, 1]
    counts = torch.bincount(draws[:, 0], minlength=6).double()
    expected = torch.softmax(logits.double() / temperature, -1) * n
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3
    wrong = torch.softmax(logits.double(), -1) * n  # temperature ignored: must be told apart
    assert chisquare(counts.numpy(), wrong.numpy()).pvalue < 1e-6
    greedy = sample_tokens(logits.expand(3, -1), 0.0, g)
    assert greedy.tolist() == [[0]] * 3
