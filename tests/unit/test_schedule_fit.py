"""Fitting the learning-rate schedule to a time budget: the arithmetic, and transformers' own schedules."""

import itertools

import pytest

from finetune.schedule_fit import (
    FIT_AFTER_STEPS,
    REFIT_EVERY,
    STOP_MARGIN_STEPS,
    fit_due,
    next_schedule,
    refit_scheduler,
    steps_that_fit,
    typical_step_s,
)


def test_steps_that_fit_leave_room_for_saves_and_evaluations():
    common = dict(planned=1000, done=5, elapsed_s=20.0, budget_s=100.0, step_s=1.0, save_s=2.0)
    # 100 - 20 - 2 saves x 2 s - 3 s - the hard stop's 1.5 steps = 71.5 s left; 90% of it for steps: 64 more.
    assert steps_that_fit(**common, eval_batches=0, steps_per_eval=None) == 5 + 64
    # Four evaluation batches at 2/3 of a step each, once per 30 steps: three evaluations in 62 steps.
    with_evals = steps_that_fit(**common, eval_batches=4, steps_per_eval=30)
    assert with_evals == 5 + int(0.9 * (71.5 - 3 * 4 * 2 / 3))
    # Never longer than planned, never shorter than one more step.
    assert steps_that_fit(**{**common, "planned": 40}, eval_batches=0, steps_per_eval=None) == 40
    assert steps_that_fit(**{**common, "elapsed_s": 99.0}, eval_batches=0, steps_per_eval=None) == 6


def test_the_first_step_is_not_the_typical_step():
    assert typical_step_s([9.0, 1.0, 1.2, 0.9, 1.1]) == pytest.approx(1.05)


def test_the_typical_step_is_what_the_steps_add_up_to_and_follows_recent_steps():
    # A few slow steps among fast ones (long rows, fp32 on an AVX2 CPU): a median of 4 would plan too many.
    assert typical_step_s([9.0, 4.0, 4.0, 4.0, 8.0]) == pytest.approx(5.0)
    # A machine that got slower (another job started) counts from when it did: the last 20 steps.
    assert typical_step_s([9.0] + [1.0] * 30 + [3.0] * 20) == pytest.approx(3.0)


def test_the_fit_is_checked_after_the_first_timed_steps_and_then_every_few_steps():
    due = [n for n in range(1, 30) if fit_due(n)]
    assert due[0] == FIT_AFTER_STEPS and all(b - a == REFIT_EVERY for a, b in itertools.pairwise(due))


def simulate(step_times: list[float], *, planned: int, budget_s: float, load_s: float, refit: bool = True) -> tuple:
    """Drive the fit as trainer.RunState does, on a clock of given step times: (how it ended, steps, seconds)."""
    clock, schedule, timed, fitted = load_s, planned, [], False
    for step in range(1, len(step_times) + 1):
        clock += step_times[step - 1]
        timed.append(step_times[step - 1])
        if step == schedule:
            return "completed", step, clock
        margin = STOP_MARGIN_STEPS * max(timed[-5:]) + 2 * 2.0 + 3.0  # RunState.should_stop's rule
        if clock + margin >= budget_s:
            return "time_budget", step, clock
        if fit_due(len(timed)) and (refit or not fitted):
            fitted = True
            fits = steps_that_fit(planned=planned, done=step, elapsed_s=clock, budget_s=budget_s,
                                  step_s=typical_step_s(timed), save_s=2.0, eval_batches=0, steps_per_eval=None)
            schedule = next_schedule(current=schedule, fits=fits, done=step)
    return "completed", planned, clock


def test_a_schedule_fitted_on_fast_first_steps_is_shortened_when_later_steps_run_slower():
    # The AVX2 stand-in's demo: 4.3 s steps while the fit timed them, then 4.3-8.0 s; a 4-minute budget.
    times = [6.0] + [4.3] * 8 + [8.0, 4.3, 6.5] * 20
    fitted_once = simulate(times, planned=39, budget_s=240.0, load_s=25.0, refit=False)
    assert fitted_once[0] == "time_budget"  # what one fit did: cut off before its schedule's end
    status, steps, clock = simulate(times, planned=39, budget_s=240.0, load_s=25.0)
    assert status == "completed" and clock + 2 * 2.0 + 3.0 <= 240.0
    assert steps >= 0.8 * fitted_once[1]  # shortened, not given up: most of what the budget allows is trained


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_a_refitted_schedule_is_the_shorter_schedule_from_the_step_it_was_refitted_at(name):
    import torch
    from transformers import get_scheduler

    def schedule(total: int) -> tuple:
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([param], lr=0.1)
        return optimizer, get_scheduler(name, optimizer, num_warmup_steps=3, num_training_steps=total)

    long_opt, long_sched = schedule(100)
    short_opt, short_sched = schedule(20)
    for _ in range(6):
        long_opt.step(), long_sched.step()
        short_opt.step(), short_sched.step()
    assert long_opt.param_groups[0]["lr"] != pytest.approx(short_opt.param_groups[0]["lr"])
    assert refit_scheduler(long_sched, long_opt, 20)
    assert long_opt.param_groups[0]["lr"] == pytest.approx(short_opt.param_groups[0]["lr"])
    assert long_sched.get_last_lr() == pytest.approx(short_sched.get_last_lr())
    for _ in range(14):
        long_opt.step(), long_sched.step()
        short_opt.step(), short_sched.step()
        assert long_opt.param_groups[0]["lr"] == pytest.approx(short_opt.param_groups[0]["lr"])
    assert long_opt.param_groups[0]["lr"] == pytest.approx(0.0)  # decayed by the fitted end


def test_a_constant_schedule_has_no_end_to_move():
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=3)
    assert not refit_scheduler(scheduler, optimizer, 20)


def test_learning_rate_auto_by_model_size_and_a_number_as_given():
    from finetune.trainer import AUTO_LEARNING_RATE, SMALL_MODEL_PARAMS, choose_learning_rate

    assert choose_learning_rate("auto", 135_000_000) == AUTO_LEARNING_RATE["small"] == 1e-3
    assert choose_learning_rate("auto", SMALL_MODEL_PARAMS) == AUTO_LEARNING_RATE["large"] == 2e-4
    assert choose_learning_rate(3e-4, 8_000_000_000) == 3e-4


def test_a_schedule_cut_for_one_slow_batch_grows_back_early_but_never_late():
    # The AVX2 stand-in's packed demo: the batch of the longest rows came at steps 6-10 (6.5 s against 4.4 s).
    times = [6.0] + [3.6] * 4 + [6.5] * 5 + [4.4] * 60
    status, steps, clock = simulate(times, planned=60, budget_s=240.0, load_s=20.0)
    assert status == "completed" and clock + 2 * 2.0 + 3.0 <= 240.0
    assert clock >= 0.8 * 240.0, f"{steps} steps used {clock:.0f} s of a 240 s budget"
    assert next_schedule(current=40, fits=30, done=35) == 30  # shorter: at any point
    assert next_schedule(current=40, fits=50, done=19) == 50  # longer: in the first half
    assert next_schedule(current=40, fits=50, done=20) == 40  # not later: the rate has decayed
    assert next_schedule(current=40, fits=41, done=5) == 40  # nor by a step or two (noise)
    assert next_schedule(current=40, fits=50, done=5, may_grow=False) == 40  # nor on resume
