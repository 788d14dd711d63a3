"""What --resume checks before it continues: the recipe's changed keys, intact checkpoints, the run lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune.errors import RunError
from finetune.recipe import parse_recipe
from finetune.resume import check_same_run, checkpoint_is_final, checkpoint_problem, pick_checkpoint, recipe_changes
from finetune.runlock import PID_FILE, RunLock


def recipe(**training):
    return parse_recipe({"name": "r", "dataset": {"path": "d.jsonl"}, "lora": {"r": 8},
                         "training": {"learning_rate": 1e-3, **training}})


def test_recipe_changes_name_each_key_but_not_run_control_keys():
    saved = recipe().model_dump(mode="json")
    edited = recipe(learning_rate=2e-3, max_time="8h", save_minutes=5, logging_steps=1, max_steps=99)
    edited.lora.r = 16
    edited.dataset.path = "other.jsonl"
    edited.tracking.wandb = "disabled"
    assert recipe_changes(saved, edited) == [
        'dataset.path: "d.jsonl" -> "other.jsonl"', "lora.r: 8 -> 16", "training.learning_rate: 0.001 -> 0.002"]
    assert recipe_changes(saved, recipe()) == []


def test_check_same_run_refuses_with_the_diff_unless_forced(tmp_path):
    (tmp_path / "recipe.yaml").write_text(recipe().to_yaml())
    (tmp_path / "summary.json").write_text(json.dumps({"dataset_sha256": "a" * 64}))
    said: list[str] = []
    with pytest.raises(RunError) as info:
        check_same_run(tmp_path, recipe(learning_rate=5e-4), "b" * 64, None, False, said.append)
    message = str(info.value)
    assert "training.learning_rate: 0.001 -> 0.0005" in message and "d.jsonl changed" in message
    assert "aaaaaaaaaaaa" in message and "bbbbbbbbbbbb" in message and "--force" in message and "\n" not in message
    check_same_run(tmp_path, recipe(learning_rate=5e-4), "b" * 64, None, True, said.append)
    assert said and said[0].startswith("warning: resuming anyway (--force)")
    check_same_run(tmp_path, recipe(max_time="9h"), "a" * 64, None, False, said.append)  # nothing to refuse


def make_checkpoint(folder: Path, step: int, max_steps: int = 10) -> Path:
    """A checkpoint folder with the files transformers and finetune write (real formats, tiny tensors)."""
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"base_model.model.layer.lora_A.weight": torch.randn(4, 8)}, path / "adapter_model.safetensors")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps,
                                                          "log_history": []}))
    torch.save({"state": {}, "param_groups": []}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    (path / "finetune_ledger.json").write_text(json.dumps({"extra": {"dataset_sha256": "c" * 64}}))
    return path


@pytest.mark.parametrize("damage", ["truncate weights", "empty optimizer", "cut optimizer", "no scheduler",
                                    "bad state json", "state of another step"])
def test_a_damaged_checkpoint_is_named_and_passed_over(tmp_path, damage):
    good = make_checkpoint(tmp_path, 5)
    latest = make_checkpoint(tmp_path, 10)
    assert checkpoint_problem(latest) is None
    if damage == "truncate weights":
        data = (latest / "adapter_model.safetensors").read_bytes()
        (latest / "adapter_model.safetensors").write_bytes(data[: len(data) - 10])
    elif damage == "empty optimizer":
        (latest / "optimizer.pt").write_bytes(b"")
    elif damage == "cut optimizer":
        data = (latest / "optimizer.pt").read_bytes()
        (latest / "optimizer.pt").write_bytes(data[: len(data) // 2])
    elif damage == "no scheduler":
        (latest / "scheduler.pt").unlink()
    elif damage == "bad state json":
        (latest / "trainer_state.json").write_text('{"global_step": 10, "lo')
    else:
        (latest / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    assert checkpoint_problem(latest)
    said: list[str] = []
    assert pick_checkpoint(tmp_path, said.append) == good
    assert len(said) == 1 and "checkpoint-10 is damaged" in said[0]


def test_no_intact_checkpoint_gives_none_and_final_is_judged_by_the_target(tmp_path):
    assert pick_checkpoint(tmp_path / "none", print) is None
    ckpt = make_checkpoint(tmp_path, 10, max_steps=10)
    assert checkpoint_is_final(ckpt, -1) and checkpoint_is_final(ckpt, 10)
    assert not checkpoint_is_final(ckpt, 12), "--max-steps beyond the checkpoint trains on"


def test_the_run_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    run = tmp_path / "run"
    first = RunLock(run)
    first.acquire(create=True)
    first.mark()
    assert (run / PID_FILE).read_text().strip() == str(os.getpid())
    with pytest.raises(RunError) as info:
        RunLock(run).acquire(create=True)
    assert f"pid {os.getpid()}" in str(info.value) and "in use" in str(info.value)
    # Another process is refused too, and the lock dies with its holder (no stale lock after a crash).
    code = ("import sys; from pathlib import Path; from finetune.runlock import RunLock\n"
            "try:\n    RunLock(Path(sys.argv[1])).acquire(create=True)\nexcept Exception as e:\n"
            "    print(e); sys.exit(3)\n")
    other = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True)
    assert other.returncode == 3 and "in use" in other.stdout
    first.release()
    assert not (run / PID_FILE).exists()
    other = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True)
    assert other.returncode == 0, other.stdout + other.stderr
    again = RunLock(run)
    again.acquire(create=False)
    again.release()
    RunLock(tmp_path / "absent").acquire(create=False)  # --resume of a missing folder: prepare_run_dir says so
    assert not (tmp_path / "absent").exists()


def test_force_empties_run_folders_only(tmp_path):
    """A mistyped --output-dir that names a folder of the user's own files is refused, --force or not."""
    from finetune.runs import prepare_run_dir

    theirs = tmp_path / "theirs"
    (theirs / "sub").mkdir(parents=True)
    (theirs / "important.txt").write_text("keep")
    for force in (False, True):
        with pytest.raises(RunError, match="not empty and not a run folder"):
            prepare_run_dir(recipe(), theirs, force=force, resume=False)
    assert (theirs / "important.txt").read_text() == "keep" and (theirs / "sub").is_dir()
    # A run folder is emptied with --force (and only then)
    run = tmp_path / "run"
    prepare_run_dir(recipe(), run, force=False, resume=False)
    (run / "adapter").mkdir()
    with pytest.raises(RunError, match="holds an earlier run; use --force"):
        prepare_run_dir(recipe(), run, force=False, resume=False)
    prepare_run_dir(recipe(), run, force=True, resume=False)
    assert sorted(p.name for p in run.iterdir()) == ["recipe.yaml"]


def test_resume_is_offered_only_where_a_checkpoint_is(tmp_path):
    """A run killed before its first checkpoint has an empty checkpoints/: --resume would be refused there."""
    from finetune.runs import CHECKPOINTS, prepare_run_dir

    run = tmp_path / "run"
    prepare_run_dir(recipe(), run, force=False, resume=False)
    (run / CHECKPOINTS).mkdir()
    with pytest.raises(RunError) as info:
        prepare_run_dir(recipe(), run, force=False, resume=False)
    assert "--resume" not in str(info.value) and "--force" in str(info.value)
    (run / CHECKPOINTS / "checkpoint-2").mkdir()
    with pytest.raises(RunError, match="use --resume to continue it, or --force"):
        prepare_run_dir(recipe(), run, force=False, resume=False)


@pytest.mark.parametrize(("section", "values", "shown"), [
    ("lora", {"r": 16}, "lora.r: 8 -> 16"),
    ("lora", {"target_modules": ["q_proj"]}, 'lora.target_modules: "all-linear" -> ["q_proj"]'),
    (None, {"base_model": "HuggingFaceTB/SmolLM2-360M-Instruct"}, "base_model: "),
])
def test_a_change_the_checkpoint_cannot_load_is_refused_even_with_force(tmp_path, section, values, shown):
    # --force took lora.r 16 -> 8, rewrote recipe.yaml and summary.json, then died in a 480-line size mismatch.
    (tmp_path / "recipe.yaml").write_text(recipe().to_yaml())
    edited = recipe().model_dump(mode="json")
    (edited[section] if section else edited).update(values)
    said: list[str] = []
    for force in (False, True):
        with pytest.raises(RunError) as info:
            check_same_run(tmp_path, parse_recipe(edited), "a" * 64, None, force, said.append)
        message = str(info.value)
        assert shown in message and "even with --force" in message and "\n" not in message, message
    assert not said
    # What leaves every tensor's shape alone is still --force's to take.
    loose = recipe().model_dump(mode="json")
    loose["lora"].update(alpha=8, dropout=0.2)
    loose["quantization"]["bits"] = 8
    check_same_run(tmp_path, parse_recipe(loose), "a" * 64, None, True, said.append)
    assert said and "lora.alpha" in said[0] and "quantization.bits: 4 -> 8" in said[0]


def test_an_output_dir_that_is_a_file_is_refused_in_one_line(tmp_path):
    from finetune.runs import prepare_run_dir

    afile = tmp_path / "afile"
    afile.write_text("mine")
    for resume in (False, True):
        with pytest.raises(RunError) as info:
            prepare_run_dir(recipe(), afile, force=True, resume=resume)
        assert str(info.value) == f"{afile}: is a file, not a run folder"
    with pytest.raises(RunError) as info:
        prepare_run_dir(recipe(), afile / "run", force=False, resume=False)
    assert str(info.value) == f"{afile / 'run'}: {afile} is a file, not a folder"
    assert afile.read_text() == "mine"


def test_the_hint_for_an_existing_run_follows_its_state(tmp_path):
    """A completed run has nothing left for a bare --resume; an interrupted one takes "an"."""
    from finetune.runs import CHECKPOINTS, prepare_run_dir

    run = tmp_path / "run"
    prepare_run_dir(recipe(), run, force=False, resume=False)
    make_checkpoint(run / CHECKPOINTS, 6, max_steps=6)
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 6}))
    with pytest.raises(RunError) as info:
        prepare_run_dir(recipe(), run, force=False, resume=False)
    assert str(info.value) == (f"{run}: holds a completed run; use --force to train it again from the start, or "
                               "--resume --max-steps N (more than its 6 steps) to train it further")
    (run / "summary.json").write_text(json.dumps({"status": "interrupted", "steps": 6}))
    with pytest.raises(RunError) as info:
        prepare_run_dir(recipe(), run, force=False, resume=False)
    assert str(info.value) == (f"{run}: holds an interrupted run; use --resume to continue it, or --force to "
                               "overwrite it")


def test_a_resume_carries_the_energy_and_time_the_summary_holds_past_the_checkpoint():
    from finetune.telemetry import Ledger

    # The checkpoint's ledger stopped at 10 Wh / 100 s; the session went on to 12.5 Wh / 160 s before its summary.
    ledger = Ledger(elapsed_before_s=100.0, energy_before_wh=10.0)
    ledger.carry_summary({"wall_time_s": 160.0, "energy_wh": 12.5, "started_at": "2026-12-05T10:00:00"})
    assert (ledger.elapsed_before_s, ledger.energy_before_wh) == (160.0, 12.5)
    # An older summary (a session killed before writing its own) never takes anything back; a CPU has no energy.
    ledger.carry_summary({"wall_time_s": 90.0, "energy_wh": 8.0})
    ledger.carry_summary({"wall_time_s": None, "energy_wh": None})
    assert (ledger.elapsed_before_s, ledger.energy_before_wh) == (160.0, 12.5)
