"""A small run does not calibrate a large one (issue 20, item 1: an estimate that learns from every run).

A 1-row smoke test and the demo recipe share model, precision and max_length; the smoke test's steps hold a
twentieth of the tokens, so its step's fixed costs made its speed factor read the demo's 11 minutes as 18, and,
stored as the same kind, it replaced the demo run's record (first-time user's review, 2026-12-05).
"""

import json
import os
from pathlib import Path

import pytest

from finetune.estimate.calibration import RUNS_FILE, _same_kind, learned_from_run, machine_key


def _record(run: str, tokens_per_step: float | None, max_length: int = 256, speed_factor: float = 1.0) -> dict:
    measured = {"seconds_per_step": 2.0, "peak_memory_mb": 3000.0}
    if tokens_per_step is not None:  # older records may lack it
        measured["tokens_per_step"] = tokens_per_step
    return {"key": machine_key(), "model": "m", "precision": "bf16", "quantization": None,
            "gradient_checkpointing": False, "max_length": max_length, "run": run, "recipe": run,
            "measured_at": "2026-12-05T16:00:00+00:00", "speed_factor": speed_factor, "memory_factor": 1.0,
            "compile": False, "measured": measured}


@pytest.fixture
def runs_file() -> Path:
    return Path(os.environ["FINETUNE_HOME"]) / RUNS_FILE


def _learned(seq: int, tokens_per_step: float | None) -> str | None:
    found = learned_from_run("m", "bf16", None, False, seq, tokens_per_step=tokens_per_step)
    return found and found["run"]


def test_runs_of_very_different_work_per_step_are_kept_apart():
    assert not _same_kind(_record("demo", 1500.0), _record("smoke", 60.0))
    assert _same_kind(_record("demo", 1500.0), _record("demo-again", 1200.0))
    assert _same_kind(_record("demo", 1500.0), _record("old", None))  # an older record: by its setup alone


def test_the_estimate_learns_from_the_run_nearest_its_tokens_per_step(runs_file):
    runs_file.write_text(json.dumps([_record("demo", 1500.0, speed_factor=1.2),
                                     _record("smoke", 60.0, speed_factor=3.0)]))
    assert _learned(256, 1400.0) == "demo"  # the smoke test is newer but its steps are 20x smaller
    assert _learned(256, 80.0) == "smoke"
    assert _learned(256, None) == "smoke"  # nothing known of the work: the newest, as before


def test_length_and_work_weigh_together(runs_file):
    runs_file.write_text(json.dumps([_record("long-rows", 1500.0, max_length=512),
                                     _record("same-length-tiny-steps", 100.0, max_length=256)]))
    # 2x apart in length but the same work, against the same length and 14x less work
    assert _learned(256, 1400.0) == "long-rows"


def test_tokens_per_step_counts_the_optimizer_steps_an_epoch_really_has():
    from finetune.estimate.plan import tokens_per_step
    from finetune.estimate.tokens import Tokens
    from finetune.recipe import parse_recipe

    def recipe(batch: int, accumulation: int):
        return parse_recipe({"name": "r", "base_model": "bundled:smollm2-135m-instruct",
                             "dataset": {"path": "d.jsonl"},
                             "training": {"batch_size": batch, "gradient_accumulation": accumulation}})

    one_row = Tokens(rows_train=1, rows_eval=0, lengths=[300], eval_lengths=[], method="tokenizer")
    assert tokens_per_step(recipe(4, 4), one_row) == 300  # one micro-batch, one step: not 4 x 300
    rows = Tokens(rows_train=64, rows_eval=0, lengths=[100] * 64, eval_lengths=[], method="tokenizer")
    assert tokens_per_step(recipe(8, 1), rows) == 800
    assert tokens_per_step(recipe(8, 2), rows) == 1600
    assert tokens_per_step(recipe(8, 3), rows) == 6400 / 3  # 8 micro-batches: steps of 3, 3 and 2
