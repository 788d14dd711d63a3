"""Fitting the learning-rate schedule to a time budget: the arithmetic, and transformers' own schedules."""

import pytest

from finetune.schedule_fit import refit_scheduler, steps_that_fit, typical_step_s


def test_steps_that_fit_leave_room_for_saves_and_evaluations():
    common = dict(planned=1000, done=5, elapsed_s=20.0, budget_s=100.0, step_s=1.0, save_s=2.0)
    # 100 - 20 - 2 saves x 2 s - 3 s = 73 s left; 90% of it for steps: 65 more steps.
    assert steps_that_fit(**common, eval_batches=0, steps_per_eval=None) == 5 + 65
    # Four evaluation batches at 2/3 of a step each, once per 30 steps: three evaluations in 70 steps.
    with_evals = steps_that_fit(**common, eval_batches=4, steps_per_eval=30)
    assert with_evals == 5 + int(0.9 * (73 - 3 * 4 * 2 / 3))
    # Never longer than planned, never shorter than one more step.
    assert steps_that_fit(**{**common, "planned": 40}, eval_batches=0, steps_per_eval=None) == 40
    assert steps_that_fit(**{**common, "elapsed_s": 99.0}, eval_batches=0, steps_per_eval=None) == 6


def test_the_first_step_is_not_the_typical_step():
    assert typical_step_s([9.0, 1.0, 1.2, 0.9, 1.1]) == pytest.approx(1.05)


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
