"""Fit a run's learning-rate schedule to its time budget (training.fit_to_budget with max_time or --until).

A budget alone stops training when time runs out, mid-schedule: the learning rate never decays and the last
epoch is cut anywhere. With `fit_to_budget`, the first steps are timed on the machine at hand and the schedule
is shortened once, so warm-up, decay, the evaluations and the saves all end inside the budget. Nothing is
guessed from another machine: the same recipe trains fewer steps on a slow CPU and all of them on a fast one.
The budget's hard stop stays in place as the safety net (trainer.RunState.should_stop).
"""

from __future__ import annotations

import math
import statistics
from functools import partial
from typing import Any

# Steps timed before fitting. The first step is left out (allocator warm-up, kernels chosen, caches filled).
FIT_AFTER_STEPS = 5
# Share of the time left that the fitted steps may use: step times drift (thermal, other processes).
SAFETY = 0.9
# Forward-only evaluation of a batch against a training step (forward + backward + optimizer): about 1/3,
# doubled because evaluation batches are padded, not packed.
EVAL_STEP_SHARE = 2 / 3


def steps_that_fit(
    *, planned: int, done: int, elapsed_s: float, budget_s: float, step_s: float, save_s: float,
    eval_batches: int, steps_per_eval: float | None,
) -> int:
    """The schedule's length so that training, its evaluations and the final saves end within the budget.

    `steps_per_eval`: steps between evaluations (an epoch or eval_steps), None when nothing is evaluated.
    Never more than `planned`, never fewer than the steps already done plus one.
    """
    eval_s = eval_batches * step_s * EVAL_STEP_SHARE
    left = budget_s - elapsed_s - 2 * save_s - 3.0  # the adapter and a checkpoint at the end, the summary
    steps = planned
    for _ in range(3):  # the number of evaluations depends on the steps, which depend on it: settles at once
        evals = 0 if steps_per_eval is None else math.ceil(steps / steps_per_eval)
        extra = max(0, math.floor(SAFETY * (left - evals * eval_s) / step_s))
        steps = min(planned, done + extra)
    return max(done + 1, steps)


def typical_step_s(step_times: list[float]) -> float:
    """The median of the timed steps after the first."""
    timed = step_times[1:] or step_times
    return statistics.median(timed)


def refit_scheduler(scheduler: Any, optimizer: Any, steps: int) -> bool:
    """Make transformers' warm-up/decay schedule end at `steps`; True when it has a length to change.

    transformers builds each schedule as a LambdaLR over a `partial` with `num_training_steps`; swapping that
    keyword keeps its own formula (cosine, linear, ...). The current learning rate is set anew at once.
    """
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas or not all(isinstance(f, partial) and "num_training_steps" in f.keywords for f in lambdas):
        return False  # constant schedules: nothing ends, nothing to fit
    scheduler.lr_lambdas = [partial(f.func, *f.args, **{**f.keywords, "num_training_steps": steps}) for f in lambdas]
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return True
