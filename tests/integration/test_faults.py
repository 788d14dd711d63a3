"""Fault drills: the night going wrong on purpose. Nothing already written may be lost, every run ends with
a status, and `--resume` picks up from what is intact.

Faults are injected at the real write calls (safetensors' save_file, the metrics and summary writers) or by a
signal the process sends itself at a chosen moment; the training, saving and resuming are all real.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from finetune.errors import RunError
from finetune.recipe import parse_recipe
from finetune.train import train
from tests.conftest import recipe_dict

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


# --- helpers -------------------------------------------------------------------------------------------


def spec_for(model: Path, data: Path, **training) -> dict:
    """A tiny run: 6 steps, a checkpoint every 3, an evaluation at step 4 (so the final one runs after training)."""
    return recipe_dict(str(model), data, **{"max_steps": 6, "save_steps": 3, "eval_steps": 4, **training})


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def loss_steps(run: Path) -> list[int]:
    return [r["step"] for r in metrics(run) if r.get("loss") is not None]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under a folder with its sha256: to show nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Said(list):
    """Collects what train() says."""

    def __call__(self, text: str) -> None:
        self.append(str(text))

    def text(self) -> str:
        return "\n".join(self)


def interrupt_at_save(step: int):
    """A callback that stops the run like Ctrl-C right after the checkpoint of `step` is written."""
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt

    return Interrupt()


def interrupted_run(model: Path, data: Path, run: Path, **training) -> dict:
    """A run stopped (as by Ctrl-C) just after its step-3 checkpoint: an adapter, a summary, resumable."""
    summary = train(parse_recipe(spec_for(model, data, **training)), output_dir=run,
                    callbacks=[interrupt_at_save(3)], say=Said())
    assert summary["status"] == "interrupted" and summary["steps"] == 3, summary
    assert (run / "checkpoints/checkpoint-3").is_dir() and (run / "adapter").is_dir()
    return summary


def disk_full_for_safetensors(monkeypatch, when) -> list[str]:
    """safetensors' save_file raises ENOSPC where `when(path)` says so (the file system is full there).

    peft imports it by name (peft.peft_model.safe_save_file), transformers through the module: patch both.
    """
    import peft.peft_model
    import safetensors.torch

    original = safetensors.torch.save_file
    hits: list[str] = []

    def writer(tensors, filename, *args, **kwargs):
        if when(str(filename)):
            hits.append(str(filename))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return original(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", writer)
    monkeypatch.setattr(peft.peft_model, "safe_save_file", writer)
    return hits


# A script that trains in a child process with one fault armed (signals must not reach pytest itself).
CHILD = textwrap.dedent('''
    import os, signal, sys, time
    from pathlib import Path

    import safetensors.torch
    from transformers import TrainerCallback

    from finetune.recipe import load_recipe
    from finetune.runs import STATUS_EXIT
    from finetune.train import train

    recipe, run, fault = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    resume = "--resume" in sys.argv
    callbacks = []

    class Fault(TrainerCallback):
        def on_evaluate(self, args, state, control, **kwargs):
            # The final evaluation, after the training loop: SIGTERM lands while the run is finishing.
            if fault == "sigterm-final-eval" and state.global_step == state.max_steps:
                os.kill(os.getpid(), signal.SIGTERM)

        def on_step_end(self, args, state, control, **kwargs):
            if fault == "sigterm-twice" and state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(2.5)  # past the 2 s window that merges a launcher's duplicate signal
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
                print("still alive after the second signal", flush=True)

    original = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):
        name = str(filename)
        in_checkpoint = "checkpoint" in name
        if fault == "sigterm-adapter-save" and not in_checkpoint:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler must let this save finish
        if fault == "kill-checkpoint-save" and in_checkpoint and "checkpoint-6" in name:
            original(tensors, filename, *args, **kwargs)
            Path(filename).write_bytes(Path(filename).read_bytes()[:1000])  # half-written
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "kill-adapter-save" and not in_checkpoint:
            original(tensors, filename, *args, **kwargs)
            Path(filename).write_bytes(Path(filename).read_bytes()[:1000])
            os.kill(os.getpid(), signal.SIGKILL)
        return original(tensors, filename, *args, **kwargs)

    import peft.peft_model

    safetensors.torch.save_file = save_file
    peft.peft_model.safe_save_file = save_file  # peft imports it by name

    summary = train(load_recipe(recipe), output_dir=run, resume=resume, callbacks=[Fault()], say=print)
    print("STATUS", summary["status"], flush=True)
    sys.exit(STATUS_EXIT.get(summary["status"], 1))
''')


def child(tmp_path: Path, spec: dict, run: Path, fault: str, *extra: str, timeout: float = 300):
    """Run CHILD with a fault armed; returns (exit code, output)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(spec))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(recipe), str(run), fault, *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


# --- found bugs ----------------------------------------------------------------------------------------


def test_sigterm_during_the_final_evaluation_finishes_and_records_the_run(tiny_llama, pirate_rows, tmp_path):
    run = tmp_path / "run"
    code, out = child(tmp_path, spec_for(tiny_llama, pirate_rows), run, "sigterm-final-eval")
    assert code != 128 + signal.SIGTERM, f"killed by the signal's default action:\n{out[-3000:]}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["status"] == "completed", summary
    assert "signal" in (summary["message"] or ""), "the summary records the signal"
    assert code == 0, out[-3000:]
    assert (run / "adapter/adapter_model.safetensors").is_file()
    assert same_weights(adapter_weights(run / "adapter"), adapter_weights(run / "checkpoints/checkpoint-6"))


def test_sigterm_during_the_adapter_save_lets_it_finish(tiny_llama, pirate_rows, tmp_path):
    run = tmp_path / "run"
    code, out = child(tmp_path, spec_for(tiny_llama, pirate_rows), run, "sigterm-adapter-save")
    assert code == 0, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert same_weights(adapter_weights(run / "adapter"), adapter_weights(run / "checkpoints/checkpoint-6"))


def test_a_second_signal_exits_at_once(tiny_llama, pirate_rows, tmp_path):
    run = tmp_path / "run"
    began = time.monotonic()
    code, out = child(tmp_path, spec_for(tiny_llama, pirate_rows, max_steps=50), run, "sigterm-twice")
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert "still alive" not in out and "STATUS" not in out
    assert "again to quit at once" in out, "the first signal says how to quit at once"
    assert time.monotonic() - began < 120


def test_resume_from_the_final_checkpoint_trains_no_further(tiny_llama, pirate_rows, tmp_path):
    run = tmp_path / "run"
    spec = spec_for(tiny_llama, pirate_rows)
    train(parse_recipe(spec), output_dir=run, say=Said())
    # As if killed during the final save: checkpoint-6 is on disk, the adapter and summary are not.
    (run / "summary.json").unlink()
    import shutil

    shutil.rmtree(run / "adapter")
    said = Said()
    summary = train(parse_recipe(spec), output_dir=run, resume=True, say=said)
    assert summary["status"] == "completed" and summary["steps"] == 6 and summary["max_steps"] == 6, summary
    assert loss_steps(run) == [1, 2, 3, 4, 5, 6], "no step past max_steps, none twice"
    evals = [r["step"] for r in metrics(run) if r.get("eval_loss") is not None and r.get("loss") is None]
    assert len(evals) == len(set(evals)), f"an evaluation logged twice: {evals}"
    assert not (run / "checkpoints/checkpoint-7").exists()
    assert same_weights(adapter_weights(run / "adapter"), adapter_weights(run / "checkpoints/checkpoint-6"))
    assert "checkpoint-6" in said.text()


def test_resuming_a_completed_run_says_so_and_changes_nothing(tiny_llama, pirate_rows, tmp_path):
    run = tmp_path / "run"
    spec = spec_for(tiny_llama, pirate_rows)
    first = train(parse_recipe(spec), output_dir=run, say=Said())
    before = tree_digest(run)
    said = Said()
    again = train(parse_recipe(spec), output_dir=run, resume=True, say=said)
    assert again["status"] == "completed" and again["steps"] == 6
    assert "already completed" in said.text(), said
    assert tree_digest(run) == before, "resuming a completed run wrote something"
    assert again["finished_at"] == first["finished_at"]


# --- fault drills --------------------------------------------------------------------------------------


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tiny_llama, pirate_rows, tmp_path,
                                                                        monkeypatch):
    run = tmp_path / "run"
    spec = spec_for(tiny_llama, pirate_rows)
    hits = disk_full_for_safetensors(monkeypatch, lambda p: "checkpoint-6" in p)
    summary = train(parse_recipe(spec), output_dir=run, say=Said())
    assert hits, "the fault never fired"
    assert summary["status"] == "failed" and "No space left" in summary["message"], summary
    assert "--resume" in summary["message"], "the message says how to recover"
    assert [p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")] == ["checkpoint-3"]
    adapter_weights(run / "checkpoints/checkpoint-3")  # loadable
    monkeypatch.undo()  # space is back
    resumed = train(parse_recipe(spec), output_dir=run, resume=True, say=Said())
    assert resumed["status"] == "completed" and resumed["steps"] == 6
    assert loss_steps(run) == [1, 2, 3, 4, 5, 6]


def test_disk_full_while_saving_the_adapter_keeps_the_previous_adapter(tiny_llama, pirate_rows, tmp_path,
                                                                       monkeypatch):
    run = tmp_path / "run"
    interrupted_run(tiny_llama, pirate_rows, run)
    previous = adapter_weights(run / "adapter")
    spec = spec_for(tiny_llama, pirate_rows)
    hits = disk_full_for_safetensors(monkeypatch, lambda p: "checkpoint" not in p)
    summary = train(parse_recipe(spec), output_dir=run, resume=True, say=Said())
    assert hits, "the fault never fired"
    assert summary["status"] == "failed" and "No space left" in summary["message"], summary
    assert "adapter" in summary["message"]
    assert same_weights(adapter_weights(run / "adapter"), previous), "the earlier adapter is intact"
    assert json.loads((run / "summary.json").read_text())["status"] == "failed", "the summary is written"
    monkeypatch.undo()
    resumed = train(parse_recipe(spec), output_dir=run, resume=True, say=Said())
    assert resumed["status"] == "completed" and resumed["steps"] == 6
    assert same_weights(adapter_weights(run / "adapter"), adapter_weights(run / "checkpoints/checkpoint-6"))


def test_disk_full_while_appending_metrics_fails_cleanly_and_resumes(tiny_llama, pirate_rows, tmp_path,
                                                                     monkeypatch):
    from finetune import atomic

    run = tmp_path / "run"
    spec = spec_for(tiny_llama, pirate_rows)
    lines = {"n": 0}
    original = atomic.append_jsonl

    def append(path, record):
        lines["n"] += 1
        if lines["n"] == 5 and str(path).endswith("metrics.jsonl"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(path, record)

    monkeypatch.setattr(atomic, "append_jsonl", append)
    summary = train(parse_recipe(spec), output_dir=run, say=Said())
    assert summary["status"] == "failed" and "No space left" in summary["message"], summary
    assert (run / "checkpoints/checkpoint-3").is_dir()
    monkeypatch.undo()
    resumed = train(parse_recipe(spec), output_dir=run, resume=True, say=Said())
    assert resumed["status"] == "completed" and loss_steps(run) == [1, 2, 3, 4, 5, 6]


def test_disk_full_while_writing_the_summary_keeps_the_adapter_and_says_so(tiny_llama, pirate_rows, tmp_path,
                                                                           monkeypatch):
    from finetune import atomic

    run = tmp_path / "run"
    spec = spec_for(tiny_llama, pirate_rows)
    original = atomic.write_json

    def write_json(path, data, *args, **kwargs):
        if Path(path).name == "summary.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(path, data, *args, **kwargs)

    monkeypatch.setattr(atomic, "write_json", write_json)
    with pytest.raises(RunError) as info:
        train(parse_recipe(spec), output_dir=run, say=Said())
    message = str(info.value)
    assert "\n" not in message and "summary.json" in message and "No space left" in message
    assert "adapter" in message and "--resume" in message
    assert same_weights(adapter_weights(run / "adapter"), adapter_weights(run / "checkpoints/checkpoint-6"))
    assert not (run / "summary.json").exists()
    monkeypatch.undo()
    # Space is back: --resume finds the final checkpoint, trains nothing, and writes the summary.
    resumed = train(parse_recipe(spec), output_dir=run, resume=True, say=Said())
    assert resumed["status"] == "completed" and resumed["steps"] == 6 and loss_steps(run) == [1, 2, 3, 4, 5, 6]


def test_killed_during_a_checkpoint_save_resumes_from_the_last_complete_one(tiny_llama, pirate_rows, tmp_path):
    run = tmp_path / "run"
    spec = spec_for(tiny_llama, pirate_rows, max_steps=9)
    code, out = child(tmp_path, spec, run, "kill-checkpoint-save")
    assert code == -signal.SIGKILL, out[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3"], \
        "a half-written checkpoint must never carry a checkpoint's name"
    said = Said()
    summary = train(parse_recipe(spec), output_dir=run, resume=True, say=said)
    assert "checkpoint-3" in said.text()
    assert summary["status"] == "completed" and summary["steps"] == 9
    assert loss_steps(run) == list(range(1, 10))


def test_killed_during_the_adapter_save_never_leaves_a_half_adapter(tiny_llama, pirate_rows, tmp_path):
    run = tmp_path / "run"
    interrupted_run(tiny_llama, pirate_rows, run)
    previous = adapter_weights(run / "adapter")
    spec = spec_for(tiny_llama, pirate_rows)
    code, out = child(tmp_path, spec, run, "kill-adapter-save", "--resume")
    assert code == -signal.SIGKILL, out[-3000:]
    assert same_weights(adapter_weights(run / "adapter"), previous), "the adapter folder is the earlier, whole one"
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(run / "adapter").r == 8
    summary = train(parse_recipe(spec), output_dir=run, resume=True, say=Said())
    assert summary["status"] == "completed" and summary["steps"] == 6 and loss_steps(run) == [1, 2, 3, 4, 5, 6]
    assert same_weights(adapter_weights(run / "adapter"), adapter_weights(run / "checkpoints/checkpoint-6"))


@pytest.mark.parametrize("damage", ["truncated weights", "corrupt trainer state", "missing optimizer"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(damage, tiny_llama, pirate_rows, tmp_path):
    run = tmp_path / "run"
    spec = spec_for(tiny_llama, pirate_rows, max_steps=9, save_total_limit=3)
    train(parse_recipe(spec), output_dir=run, callbacks=[interrupt_at_save(6)], say=Said())
    latest = run / "checkpoints/checkpoint-6"
    if damage == "truncated weights":
        weights = latest / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "corrupt trainer state":
        (latest / "trainer_state.json").write_text('{"global_step": 6, "log_hi')
    else:
        (latest / "optimizer.pt").unlink()
    said = Said()
    summary = train(parse_recipe(spec), output_dir=run, resume=True, say=said)
    text = said.text()
    assert "checkpoint-6" in text and "checkpoint-3" in text and "damaged" in text, text
    assert summary["status"] == "completed" and summary["steps"] == 9
    assert loss_steps(run) == list(range(1, 10))


def test_a_second_train_on_the_same_run_folder_refuses(tiny_llama, pirate_rows, tmp_path):
    run = tmp_path / "run"
    spec = spec_for(tiny_llama, pirate_rows, max_steps=100000, save_steps=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "finetune", "train", str(recipe), "--output-dir", str(run)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (run / "checkpoints/checkpoint-2").is_dir():
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
            time.sleep(0.1)
        for flags in ({"resume": True}, {"force": True}):
            with pytest.raises(RunError) as info:
                train(parse_recipe(spec), output_dir=run, say=Said(), **flags)
            message = str(info.value)
            assert "in use" in message and str(first.pid) in message and "\n" not in message, message
        assert (run / "checkpoints").is_dir(), "the refused --force removed nothing"
        cli = subprocess.run([sys.executable, "-m", "finetune", "train", str(recipe), "--output-dir", str(run),
                              "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2 and "in use" in cli.stderr + cli.stdout and "Traceback" not in cli.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 130, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    steps = loss_steps(run)
    assert steps == list(range(1, summary["steps"] + 1)), "the first run's records are whole"


@pytest.mark.parametrize(
    ("override", "shown"),
    [({"training": {"learning_rate": 2e-3}}, "training.learning_rate: 0.001 -> 0.002"),
     ({"lora": {"r": 16}}, "lora.r: 8 -> 16")],
)
def test_resume_with_an_edited_recipe_is_refused_with_a_diff_unless_forced(override, shown, tiny_llama,
                                                                          pirate_rows, tmp_path):
    run = tmp_path / "run"
    interrupted_run(tiny_llama, pirate_rows, run)
    before = tree_digest(run)
    spec = spec_for(tiny_llama, pirate_rows)
    for section, values in override.items():
        spec[section] = {**spec[section], **values}
    with pytest.raises(RunError) as info:
        train(parse_recipe(spec), output_dir=run, resume=True, say=Said())
    message = str(info.value)
    assert shown in message and "--force" in message and "\n" not in message, message
    assert tree_digest(run) == before, "a refused resume changed the run folder"
    # Run-control keys may change on a resume without complaint (a longer night, fewer logs).
    relaxed = spec_for(tiny_llama, pirate_rows, logging_steps=2, max_time="8h")
    if "lora" not in override:
        summary = train(parse_recipe(spec), output_dir=run, resume=True, force=True, say=Said())
        assert summary["status"] == "completed" and summary["steps"] == 6
        assert "learning_rate: 0.002" in (run / "recipe.yaml").read_text(), "recipe.yaml is what ran last"
    else:
        summary = train(parse_recipe(relaxed), output_dir=run, resume=True, say=Said())
        assert summary["status"] == "completed" and summary["steps"] == 6


def test_resume_after_the_dataset_changed_is_refused_unless_forced(tiny_llama, pirate_rows, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(pirate_rows.read_bytes())
    run = tmp_path / "run"
    interrupted_run(tiny_llama, data, run)
    before = tree_digest(run)
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same rows, other order
    spec = spec_for(tiny_llama, data)
    with pytest.raises(RunError) as info:
        train(parse_recipe(spec), output_dir=run, resume=True, say=Said())
    message = str(info.value)
    assert "data.jsonl" in message and "changed" in message and "--force" in message, message
    assert tree_digest(run) == before
    summary = train(parse_recipe(spec), output_dir=run, resume=True, force=True, say=Said())
    assert summary["status"] == "completed"
    assert summary["dataset_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
