"""A resume that cannot continue leaves the run as it was; a completed run trains further with --max-steps."""

from __future__ import annotations

import json

import pytest

from finetune.errors import RunError
from finetune.recipe import parse_recipe
from finetune.train import train
from tests.integration.test_faults import Said, interrupted_run, loss_steps, metrics, spec_for, tree_digest

pytestmark = pytest.mark.slow


def test_a_lora_shape_change_is_refused_on_resume_even_with_force(tiny_llama, pirate_rows, tmp_path):
    # It was taken: recipe.yaml became r=16, then a 480-line size-mismatch traceback, and summary.json said
    # failed at 0 steps; the original recipe was refused on the next --resume.
    run = tmp_path / "run"
    interrupted_run(tiny_llama, pirate_rows, run)
    before = tree_digest(run)
    spec = spec_for(tiny_llama, pirate_rows)
    spec["lora"] = {**spec["lora"], "r": 16}
    with pytest.raises(RunError) as info:
        train(parse_recipe(spec), output_dir=run, resume=True, force=True, say=Said())
    message = str(info.value)
    assert "lora.r: 8 -> 16" in message and "even with --force" in message and "\n" not in message, message
    assert tree_digest(run) == before, "a refused resume changed the run folder"


def test_a_resume_that_fails_before_a_step_keeps_recipe_and_summary(tiny_llama, pirate_rows, tmp_path):
    """Whatever fails once the model is built (here: right after the checkpoint loaded) is one line."""
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            raise RuntimeError("cannot go on\n" + "size mismatch ...\n" * 200)

    run = tmp_path / "run"
    interrupted_run(tiny_llama, pirate_rows, run)
    # As a process killed after step 4 leaves it: a metrics line past the checkpoint (it was trimmed away).
    last = metrics(run)[-1]
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**last, "step": 4}) + "\n")
    before = tree_digest(run)
    spec = spec_for(tiny_llama, pirate_rows, learning_rate=2e-3)  # --force takes it
    with pytest.raises(RunError) as info:
        train(parse_recipe(spec), output_dir=run, resume=True, force=True, callbacks=[Boom()], say=Said())
    message = str(info.value)
    assert message == (f"{run}: cannot resume from checkpoint-3: RuntimeError: cannot go on (and 200 more lines); "
                       "recipe.yaml and summary.json are as they were (--debug shows the traceback)"), message
    assert tree_digest(run) == before, "a resume that trained nothing changed the run folder"
    # The same recipe resumes once nothing stands in the way, and recipe.yaml then says what ran.
    summary = train(parse_recipe(spec), output_dir=run, resume=True, force=True, say=Said())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert "learning_rate: 0.002" in (run / "recipe.yaml").read_text()


def test_a_completed_run_trains_further_with_resume_and_a_larger_max_steps(tiny_llama, pirate_rows, tmp_path):
    """What the "holds a completed run" refusal advises really works."""
    run = tmp_path / "run"
    spec = spec_for(tiny_llama, pirate_rows)
    assert train(parse_recipe(spec), output_dir=run, say=Said())["status"] == "completed"
    with pytest.raises(RunError, match=r"--resume --max-steps N \(more than its 6 steps\) to train it further"):
        train(parse_recipe(spec), output_dir=run, say=Said())
    said = Said()
    summary = train(parse_recipe(spec), output_dir=run, resume=True, max_steps=8, say=said)
    assert summary["status"] == "completed" and summary["steps"] == 8, (summary, said.text())
    assert loss_steps(run) == list(range(1, 9))
    # Steps 7 and 8 train at the rates of a run planned for 8 steps: the checkpoint's optimizer held the
    # 6-step schedule's final rate (0.0), which step 7 used before the scheduler caught up.
    planned = tmp_path / "planned"
    train(parse_recipe(spec), output_dir=planned, max_steps=8, say=Said())
    rates = [r["learning_rate"] for r in metrics(run) if r.get("loss") is not None]
    assert rates[6:] == pytest.approx([r["learning_rate"] for r in metrics(planned) if r.get("loss") is not None][6:])
    assert rates[6] > 0


def test_the_max_steps_a_run_began_with_is_its_own(tiny_llama, pirate_rows, tmp_path):
    """`--max-steps 8` lived only on the command line: recipe.yaml (and the model card's recipe) said
    max_steps: null, and a `--resume` without it ended an 8-step run at step 3 as "completed"."""
    from tests.integration.test_faults import interrupt_at_save

    run = tmp_path / "run"
    spec = spec_for(tiny_llama, pirate_rows, max_steps=None)
    summary = train(parse_recipe(spec), output_dir=run, max_steps=8, callbacks=[interrupt_at_save(3)], say=Said())
    assert summary["status"] == "interrupted" and summary["steps"] == 3, summary
    assert "max_steps: 8" in (run / "recipe.yaml").read_text()
    summary = train(parse_recipe(spec), output_dir=run, resume=True, say=Said())
    assert summary["status"] == "completed" and summary["steps"] == summary["max_steps"] == 8, summary
