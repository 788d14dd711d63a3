"""The estimate learns from every finished run on this machine (issue 20, item 1).

Two real training runs of a tiny model with different shapes (sequence length, batch, LoRA rank), each in its
own process (peak RSS is a high-water mark over a process's life): the first stores its achieved seconds per
step and peak memory beside the plan's prediction; the estimate for the second is then calibrated by it and
says so. Checked as behaviour: what is stored, that it is used and how. The prediction's error against the
second run is printed (`pytest -s`); it is asserted only on a quiet machine (FINETUNE_TIMING_TESTS=1), since
step times on a loaded one measure the neighbours.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune import estimate as E
from finetune.estimate.calibration import RUNS_FILE, achieved_speed
from finetune.recipe import load_recipe
from tests.conftest import recipe_dict

ROOT = Path(__file__).resolve().parents[2]
TRAIN = """
import json, sys
from finetune.recipe import load_recipe
from finetune.train import train
summary = train(load_recipe(sys.argv[1]), output_dir=sys.argv[2], say=lambda *_: None)
print("SUMMARY " + json.dumps(summary))
"""


def _recipe_file(folder: Path, name: str, model: Path, rows: Path, max_length: int, batch: int, r: int) -> Path:
    spec = recipe_dict(str(model), rows, max_steps=8, batch_size=batch, logging_steps=1)
    spec["name"] = name
    spec["dataset"].update(max_length=max_length, eval_fraction=0.0)
    spec["lora"]["r"] = r
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _train(recipe: Path, run_dir: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", TRAIN, str(recipe), str(run_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("SUMMARY "):])


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private FINETUNE_HOME (with this machine's cached matmul speeds, to spare a re-measurement)."""
    home = tmp_path / "home"
    home.mkdir()
    cached = Path.home() / ".cache" / "finetune" / "hardware.json"
    if cached.exists():
        shutil.copy(cached, home / "hardware.json")
    monkeypatch.setenv("FINETUNE_HOME", str(home))
    return home


def test_achieved_speed_skips_warm_up_and_evaluation():
    metrics = [
        {"step": 1, "loss": 3.0, "seconds_per_step": 9.0, "tokens": 100},  # loading and warm-up: skipped
        {"step": 3, "loss": 2.9, "seconds_per_step": 1.0, "tokens": 300},
        {"step": 3, "loss": None, "eval_loss": 2.8, "seconds_per_step": 5.0, "tokens": 300},  # evaluation
        {"step": 4, "loss": 2.7, "seconds_per_step": 2.0, "tokens": 420},
        {"step": 5, "loss": None, "eval_loss": 2.6, "seconds_per_step": 7.0, "tokens": 530},  # a step + evaluation
        {"step": 6, "loss": 2.5, "seconds_per_step": 2.0, "tokens": 640},
    ]
    assert achieved_speed(metrics) == {"seconds_per_step": (1.0 * 2 + 2.0 + 2.0) / 4,
                                       "tokens_per_step": (200 + 120 + 110) / 4, "steps": 4}
    assert achieved_speed(metrics[:1]) is None  # one interval is all warm-up: nothing to learn


def test_a_finished_run_calibrates_the_next_estimate_here(tiny_llama, pirate_rows, tmp_path, home):
    env = {**os.environ, "FINETUNE_HOME": str(home), "WANDB_MODE": "disabled"}
    first_yaml = _recipe_file(tmp_path, "first", tiny_llama, pirate_rows, max_length=64, batch=4, r=8)
    second_yaml = _recipe_file(tmp_path, "second", tiny_llama, pirate_rows, max_length=128, batch=2, r=16)
    second = load_recipe(second_yaml)

    lines, _ = E.estimate_for_training(second)
    assert "rough until" in lines[1]  # nothing measured here yet
    uncalibrated = E.estimate(second)
    plain = next(r for r in uncalibrated.rows if r.this_machine)
    assert uncalibrated.calibration is None

    first_summary = _train(first_yaml, tmp_path / "first", env)
    assert first_summary["status"] == "completed"
    [record] = json.loads((home / RUNS_FILE).read_text())
    assert record["model"] == str(tiny_llama) and record["run"] == str(tmp_path / "first")
    assert record["max_length"] == 64 and record["precision"] == first_summary["precision"]
    assert record["measured"]["peak_memory_mb"] == first_summary["peak_memory_mb"]
    assert record["memory_factor"] == pytest.approx(
        record["measured"]["peak_memory_mb"] / record["predicted"]["peak_memory_mb"], rel=1e-3)
    assert record["speed_factor"] == pytest.approx(
        record["measured"]["seconds_per_step"] / record["predicted"]["seconds_per_step"], rel=1e-3)

    # The next estimate for a different shape on the same base learns from that run, and says so.
    lines, _ = E.estimate_for_training(second)
    assert "learned from run 'first'" in lines[1], lines[1]
    learned = E.estimate(second)
    assert learned.calibration["source"] == "run" and learned.calibration["run"] == str(tmp_path / "first")
    row = next(r for r in learned.rows if r.this_machine)
    assert row.seconds_per_step == pytest.approx(plain.seconds_per_step * record["speed_factor"], rel=1e-3)
    assert row.total_gb == pytest.approx(plain.total_gb * record["memory_factor"], rel=1e-3)

    second_summary = _train(second_yaml, tmp_path / "second", env)
    achieved = achieved_speed([json.loads(line) for line in
                               (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()])
    time_error = row.seconds_per_step / achieved["seconds_per_step"] - 1
    memory_error = row.total_gb * 1024 / second_summary["peak_memory_mb"] - 1
    print(f"second run predicted from the first: {row.seconds_per_step:.3f} s/step vs "
          f"{achieved['seconds_per_step']:.3f} measured ({time_error:+.1%}; uncalibrated {plain.seconds_per_step:.3f}) "
          f"peak {row.total_gb * 1024:.0f} MB vs {second_summary['peak_memory_mb']:.0f} MB ({memory_error:+.1%}; "
          f"uncalibrated {plain.total_gb * 1024:.0f}), load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    # Both runs are now stored, each its own kind; the second (same length) is what the next estimate uses.
    assert [r["run"] for r in json.loads((home / RUNS_FILE).read_text())] == [str(tmp_path / "first"),
                                                                            str(tmp_path / "second")]
    assert E.estimate(second).calibration["run"] == str(tmp_path / "second")
    if os.environ.get("FINETUNE_TIMING_TESTS") == "1":
        assert abs(time_error) <= 0.25 and abs(memory_error) <= 0.15
