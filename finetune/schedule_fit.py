"""Fit a run's learning-rate schedule to its time budget (training.fit_to_budget with max_time or --until).

A budget alone stops training when time runs out, mid-schedule: the learning rate never decays and the last
epoch is cut anywhere. With `fit_to_budget`, the first steps are timed on the machine at hand and the schedule
is shortened, so warm-up, decay, the evaluations and the saves all end inside the budget. Nothing is guessed
from another machine: the same recipe trains fewer steps on a slow CPU and all of them on a fast one.
Step times drift after the first fit (a batch of long rows, another job on the machine, a throttled GPU), so the
fit is checked again every few steps: shortened whenever the steps ran slower than timed, lengthened again only
in the schedule's first half (the learning rate has not decayed far there; later, a rate already decayed would be
raised again). The budget's hard stop stays in place as the safety net (trainer.RunState.should_stop).
"""

from __future__ import annotations

import math
import statistics
from functools import partial
from typing import Any

# Steps timed before fitting. The first step is left out (allocator warm-up, kernels chosen, caches filled).
FIT_AFTER_STEPS = 5
# After the first fit, steps between checks that the schedule still ends in time.
REFIT_EVERY = 5
# The typical step: the mean of the most recent steps. The mean, not the median, is what adds up to the run's
# time: an AVX2 CPU's fp32 steps ran 4.3-8.0 s, a median of 4.3 planned 30 steps and the budget stopped at 28.
RECENT_STEPS = 20
# A schedule grows back by at least this many steps and this share (less is noise in the step times: growing by
# a few steps at a time, a fast run's schedule fluttered between 174 and 190 steps).
GROW_MIN_STEPS = 2
GROW_MIN_SHARE = 0.05
# The hard stop leaves room for this many more steps (trainer.RunState.should_stop); a fitted schedule must end
# before that rule would fire, or a run that kept to its schedule would still be reported as cut off.
STOP_MARGIN_STEPS = 1.5
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
    # The adapter and a checkpoint at the end, the summary, and the hard stop's margin.
    left = budget_s - elapsed_s - 2 * save_s - 3.0 - STOP_MARGIN_STEPS * step_s
    steps = planned
    for _ in range(3):  # the number of evaluations depends on the steps, which depend on it: settles at once
        evals = 0 if steps_per_eval is None else math.ceil(steps / steps_per_eval)
        extra = max(0, math.floor(SAFETY * (left - evals * eval_s) / step_s))
        steps = min(planned, done + extra)
    return max(done + 1, steps)


def next_schedule(*, current: int, fits: int, done: int, may_grow: bool = True) -> int:
    """The schedule's length once `fits` steps are known to fit: shorter whenever fewer fit, longer only while
    fewer than half of the current schedule's steps are done (by GROW_MIN_STEPS and GROW_MIN_SHARE or more),
    and never for a resumed run (`may_grow` False: its checkpoint's schedule is kept)."""
    if fits < current:
        return fits
    if may_grow and done < current / 2 and fits >= max(current + GROW_MIN_STEPS, current * (1 + GROW_MIN_SHARE)):
        return fits
    return current


def typical_step_s(step_times: list[float]) -> float:
    """The mean of the most recent timed steps, the first step of the run left out."""
    timed = step_times[1:] or step_times
    return statistics.fmean(timed[-RECENT_STEPS:])


def fit_due(steps_timed: int) -> bool:
    """Whether to fit (or check the fit) after this many timed steps: at FIT_AFTER_STEPS, then every REFIT_EVERY."""
    return steps_timed >= FIT_AFTER_STEPS and (steps_timed - FIT_AFTER_STEPS) % REFIT_EVERY == 0


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
