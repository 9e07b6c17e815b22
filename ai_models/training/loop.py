"""The optimisation loop every training script runs.

A script builds its optimiser and schedule with :func:`adamw_one_cycle` and
hands :func:`optimise` what is its own: ``step_loss(step)`` draws a batch
from the script's generators and returns its loss, ``after_step(step, loss)``
does what follows a step (refresh a phantom pool, validate at the end of an
epoch, sum the loss for a log line).  Each step runs the same operations in
the same order::

    loss = step_loss(step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_grad_norm_(net.parameters(), clip_grad_norm)  # only with clip_grad_norm
    optimizer.step()
    scheduler.step()
    after_step(step, loss)

so the random draws, and with them the weights, are those of the loop each
script used to write out itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

__all__ = ["adamw_one_cycle", "optimise"]

logger = logging.getLogger(__name__)


def adamw_one_cycle(
    net: torch.nn.Module,
    lr: float,
    total_steps: int,
    *,
    weight_decay: float,
    pct_start: float,
) -> tuple[torch.optim.AdamW, OneCycleLR]:
    """AdamW over *net*'s parameters and a one-cycle schedule peaking at *lr*.

    The learning rate rises for the first *pct_start* of *total_steps*
    (scheduler steps, one per optimiser step) and anneals after.
    """
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=pct_start)
    return opt, sched


def optimise(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    steps: int,
    step_loss: Callable[[int], torch.Tensor],
    *,
    after_step: Callable[[int, torch.Tensor], None] | None = None,
    clip_grad_norm: float | None = None,
    log_every: int = 25,
    log: logging.Logger = logger,
) -> float:
    """Run *steps* optimisation steps on *net* (put in training mode first).

    Parameters
    ----------
    step_loss:
        ``step_loss(step)``, with ``step`` counting from 1 to *steps*: the
        loss of the step's batch, to be minimised.
    after_step:
        Called as ``after_step(step, loss)`` once the optimiser and the
        scheduler have stepped.
    clip_grad_norm:
        Clip the gradients to this total norm before the optimiser steps.
    log_every:
        Log ``step i/n loss ... (s/step, s)`` at step 1 and every
        *log_every* steps on *log*; 0 logs nothing.

    Returns
    -------
    float
        The seconds the steps took.
    """
    net.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad_norm)
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step(step, loss)
        if log_every > 0 and (step % log_every == 0 or step == 1):
            elapsed = time.perf_counter() - t0
            log.info(
                "step %d/%d loss %.4f (%.2f s/step, %.0f s)",
                step,
                steps,
                float(loss.detach()),
                elapsed / step,
                elapsed,
            )
    return time.perf_counter() - t0
