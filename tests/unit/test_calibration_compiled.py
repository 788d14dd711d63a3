"""Compiled runs teach the estimate of compiled runs only (issue 20: an estimate that learns from every run)."""

import json
import os
from pathlib import Path

import pytest

from finetune.estimate.calibration import RUNS_FILE, _same_kind, first_step_extra, learned_from_run, machine_key


def _record(run: str, compiled: bool | None, max_length: int = 256, **extra) -> dict:
    record = {"key": machine_key(), "model": "m", "precision": "bf16", "quantization": None,
              "gradient_checkpointing": False, "max_length": max_length, "run": run, "recipe": run,
              "measured_at": "2026-12-03T16:00:00+00:00", "speed_factor": 1.5, "memory_factor": 1.1, **extra}
    if compiled is not None:  # records written before compiled runs were kept have no "compile"
        record["compile"] = compiled
    return record


@pytest.fixture
def runs_file() -> Path:
    return Path(os.environ["FINETUNE_HOME"]) / RUNS_FILE


def _learned(compiled: bool, seq: int = 256) -> str | None:
    found = learned_from_run("m", "bf16", None, False, seq, compiled=compiled)
    return found and found["run"]


def test_a_compiled_estimate_takes_the_larger_memory_factor_of_compiled_and_eager_runs(runs_file):
    compiled = _record("compiled", True, first_step_extra_s=30.0, speed_factor=0.8, memory_factor=0.86)
    runs_file.write_text(json.dumps([_record("eager", False, memory_factor=1.06), compiled]))
    found = learned_from_run("m", "bf16", None, False, 256, compiled=True)
    assert (found["run"], found["speed_factor"], found["first_step_extra_s"]) == ("compiled", 0.8, 30.0)
    assert (found["memory_factor"], found["memory_from"]) == (1.06, "eager")
    runs_file.write_text(json.dumps([_record("eager", False, memory_factor=0.8), compiled]))
    found = learned_from_run("m", "bf16", None, False, 256, compiled=True)
    assert found["memory_factor"] == 0.86 and "memory_from" not in found


def test_an_eager_estimate_never_learns_from_a_compiled_run(runs_file):
    runs_file.write_text(json.dumps([_record("compiled", True, first_step_extra_s=30.0)]))
    assert _learned(compiled=False) is None
    assert _learned(compiled=True) == "compiled"


def test_a_compiled_estimate_prefers_compiled_runs_and_falls_back_to_eager_ones(runs_file):
    runs_file.write_text(json.dumps([_record("old-eager", None), _record("compiled", True, max_length=512)]))
    assert _learned(compiled=False) == "old-eager"  # a record without "compile" is an eager run's
    assert _learned(compiled=True) == "compiled"  # its own kind first, even at a farther length
    runs_file.write_text(json.dumps([_record("old-eager", None)]))
    assert _learned(compiled=True) == "old-eager"  # none compiled: the eager run, slower and larger (safe side)


def test_compiled_and_eager_runs_are_stored_as_different_kinds():
    assert not _same_kind(_record("a", True), _record("b", False))
    assert _same_kind(_record("a", None), _record("b", False))
    assert _same_kind(_record("a", True), _record("b", True))


def test_first_step_extra_is_the_first_steps_time_over_the_steady_ones():
    metrics = [{"step": 1, "loss": 3.0, "seconds_per_step": 31.5}, {"step": 2, "loss": 2.9, "seconds_per_step": 1.4}]
    assert first_step_extra(metrics, 1.5) == pytest.approx(30.0)
    assert first_step_extra(metrics[1:], 1.5) is None  # the first step was not logged
    assert first_step_extra([{"step": 1, "loss": 3.0, "seconds_per_step": 1.0}], 1.5) == 0.0
