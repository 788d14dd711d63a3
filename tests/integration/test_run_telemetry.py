"""The run's own record across a stop and a resume, from real training: what a stop skips, which step is
logged last, and the clocks and throughput that metrics.jsonl and summary.json report.

One short interrupted run and its resume (tiny random llama, 6 steps) are checked for all of it, so the CI
pays for two tiny trainings only.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from transformers import TrainerCallback

from finetune.recipe import parse_recipe
from finetune.train import train
from tests.conftest import recipe_dict

pytestmark = pytest.mark.slow


class SignalAtStep(TrainerCallback):
    """Sends this process a real SIGINT as step `step` begins (Ctrl-C during that step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_a_stop_and_a_resume_keep_an_honest_record(tiny_llama, pirate_rows, tmp_path):
    # eval_steps unset: the held-out split is evaluated per epoch (transformers' "epoch" strategy), and an
    # epoch is 11 steps here, so only the end of training or a stop can trigger it. logging_steps 4 does not
    # divide the stop step (3) nor the last step (6).
    spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=6, logging_steps=4, eval_steps=None)
    spec["dataset"]["max_length"] = 512  # rows of their own lengths, so batches differ in tokens
    recipe = parse_recipe(spec)
    run = tmp_path / "run"

    first = train(recipe, output_dir=run, callbacks=[SignalAtStep(3)], say=lambda *_: None)
    assert first["status"] == "interrupted" and first["steps"] == 3, first
    lines = records(run)

    # A stop saves at once: no evaluation of the held-out split after the signal (the summary reports none).
    assert [r for r in lines if r.get("eval_loss") is not None] == [], lines
    assert first["peak_memory_by_phase_mb"]["eval"] is None and first["eval_loss"] is None, first

    # The step the run stopped at is logged, so the summary's train_loss is that step's (not step 1's).
    logged = {r["step"]: r for r in lines if r.get("loss") is not None}
    assert sorted(logged) == [1, 3], sorted(logged)
    assert first["train_loss"] == pytest.approx(logged[3]["loss"])

    # One clock from the command's start: the first step's line is no earlier than time_to_first_step_s,
    # which counts loading too.
    assert logged[1]["elapsed_s"] >= first["time_to_first_step_s"] - 0.02, (logged[1], first)

    final = train(recipe, output_dir=run, resume=True, say=lambda *_: None)
    assert final["status"] == "completed" and final["steps"] == 6, final
    lines = records(run)
    logged = {r["step"]: r for r in lines if r.get("loss") is not None}
    assert sorted(logged) == [1, 3, 4, 6], sorted(logged)
    assert final["train_loss"] == pytest.approx(logged[6]["loss"])
    evals = [r for r in lines if r.get("eval_loss") is not None]
    assert [r["step"] for r in evals] == [6] and final["eval_loss"] == pytest.approx(evals[0]["eval_loss"])

    # The first line after the resume measures this session's step 4 alone, not every token since step 0
    # over this session's time: its rate times its pace is the tokens of that one step.
    step4 = logged[4]
    assert step4["tokens_per_s"] * step4["seconds_per_step"] == pytest.approx(
        step4["tokens"] - logged[3]["tokens"], rel=0.01), (logged[3], step4)

    # The resumed clock continues from the whole first session (as its summary recorded it, which is later
    # than its checkpoint) plus this session from its command's start: never backwards.
    elapsed = [r["elapsed_s"] for r in lines]
    assert elapsed == sorted(elapsed), elapsed
    assert step4["elapsed_s"] - first["wall_time_s"] >= final["time_to_first_step_s"] - 0.02, (step4, first, final)
    assert final["wall_time_s"] >= step4["elapsed_s"] >= first["wall_time_s"]
    # The run began when the first session did.
    assert final["started_at"] == first["started_at"]
