"""The training scripts' shared optimisation loop on a tiny linear problem."""

from __future__ import annotations

import logging

import pytest
import torch

from ai_models.training.loop import adamw_one_cycle, optimise


def _fit(
    seed: int, steps: int, log_every: int = 25, log: logging.Logger | None = None
) -> tuple[torch.nn.Linear, list[float], list[int], list[int]]:
    """Fit ``y = 2 x - 1`` with noise-free random batches; return the net, the
    losses and the steps seen by ``step_loss`` and ``after_step``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Linear(1, 1)
    opt, sched = adamw_one_cycle(net, 0.1, steps, weight_decay=1e-4, pct_start=0.1)
    losses: list[float] = []
    drawn: list[int] = []
    after: list[int] = []

    def step_loss(step: int) -> torch.Tensor:
        drawn.append(step)
        x = torch.rand(16, 1, generator=gen) * 2 - 1
        return torch.nn.functional.mse_loss(net(x), 2 * x - 1)

    def after_step(step: int, loss: torch.Tensor) -> None:
        after.append(step)
        losses.append(float(loss.detach()))

    net.eval()  # optimise puts it in training mode
    log = log or logging.getLogger("loop-test-quiet")
    optimise(net, opt, sched, steps, step_loss, after_step=after_step, log_every=log_every, log=log)
    assert net.training
    assert sched.last_epoch == steps  # one scheduler step per optimiser step
    return net, losses, drawn, after


def test_steps_after_step_and_the_loss_going_down() -> None:
    _, losses, drawn, after = _fit(0, 60)
    assert drawn == after == list(range(1, 61))
    assert sum(losses[-10:]) / 10 < 0.05 * sum(losses[:10]) / 10


def test_the_same_seed_gives_the_same_parameters() -> None:
    a, _, _, _ = _fit(3, 20)
    b, _, _, _ = _fit(3, 20)
    c, _, _, _ = _fit(4, 20)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)


def test_gradients_are_clipped_before_the_optimiser_steps() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt, sched = adamw_one_cycle(net, 1e-3, 3, weight_decay=0.0, pct_start=0.3)
    norms: list[float] = []

    def after_step(step: int, loss: torch.Tensor) -> None:
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def step_loss(step: int) -> torch.Tensor:
        return (net(torch.full((2, 4), 100.0)) ** 2).mean()

    optimise(net, opt, sched, 3, step_loss, after_step=after_step, clip_grad_norm=0.5)
    assert norms and all(n == pytest.approx(0.5, rel=1e-5) for n in norms)


def test_the_progress_line(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("loop-test")
    with caplog.at_level(logging.INFO, logger="loop-test"):
        _fit(0, 12, log_every=5, log=log)
    lines = [r.getMessage() for r in caplog.records if r.name == "loop-test"]
    assert [line.split(" loss ")[0] for line in lines] == ["step 1/12", "step 5/12", "step 10/12"]
    assert all("s/step" in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="loop-test"):
        _fit(0, 12, log_every=0, log=log)
    assert not [r for r in caplog.records if r.name == "loop-test"]
