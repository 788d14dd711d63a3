"""Overnight safety for real: files and fields, time budgets, SIGTERM and SIGKILL with resume, wandb offline."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_tiny_model, recipe_dict

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory, bundled_dir):
    """A random llama big enough that a step takes a measurable moment (so signals land mid-run)."""
    return make_tiny_model(tmp_path_factory.mktemp("small-llama"), "llama", bundled_dir,
                           hidden_size=128, num_hidden_layers=4, intermediate_size=256)


def on_cuda() -> bool:
    """Runs train on the GPU where there is one: power and energy readings exist only there."""
    import torch

    return torch.cuda.is_available()


def write_recipe(tmp_path, model, data, **training):
    spec = recipe_dict(str(model), data, **training)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start(recipe, run_dir, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "500"}  # no wrapped lines in the output we read
    return subprocess.Popen([sys.executable, "-m", "finetune", "train", str(recipe), "--output-dir", str(run_dir),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=ROOT)


def metrics(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_short_run_writes_every_file_with_documented_fields(small_llama, pirate_rows, tmp_path):
    from finetune.recipe import parse_recipe
    from finetune.train import train

    spec = recipe_dict(str(small_llama), pirate_rows, max_steps=6, save_steps=3, eval_steps=3)
    spec["tracking"] = {"wandb": "offline", "project": "finetune-tests"}
    spec["cost"] = {"hourly_rate": {"amount": 0.39, "currency": "USD"}, "currency": "JPY"}
    run = tmp_path / "run"
    summary = train(parse_recipe(spec), output_dir=run, say=lambda *_: None)
    for name in ("adapter", "recipe.yaml", "metrics.jsonl", "summary.json", "curves.png", "checkpoints", "wandb"):
        assert (run / name).exists(), name
    lines = metrics(run)
    steps = [r for r in lines if r.get("loss") is not None]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for field in ("epoch", "loss", "learning_rate", "grad_norm", "tokens", "tokens_per_s", "seconds_per_step",
                  "elapsed_s", "eta_s", "peak_memory_mb", "cost"):
        assert field in steps[-1], field
    assert steps[-1]["tokens"] > steps[0]["tokens"] > 0
    if not on_cuda():  # a GPU host reports NVML power where pynvml is installed
        assert "power_w" not in steps[-1], "CPU runs omit NVML fields"
    assert any(r.get("eval_loss") is not None for r in lines)
    assert steps[-1]["cost"]["currency"] == "JPY" and steps[-1]["cost"]["amount"] > 0
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary, default=str))
    for field in ("status", "steps", "tokens", "train_loss", "eval_loss", "wall_time_s", "peak_memory_mb",
                  "energy_wh", "cost", "hardware", "versions", "recipe_sha256", "dataset_sha256"):
        assert field in on_disk, field
    assert on_disk["status"] == "completed"
    if not on_cuda():
        assert on_disk["energy_wh"] is None, "no power reading on a CPU: no made-up energy"
    assert on_disk["cost"]["currency"] == "JPY" and on_disk["versions"]["transformers"]
    assert len(on_disk["dataset_sha256"]) == 64
    # wandb ran offline through the trainer's integration and logged our fields too.
    runs = list((run / "wandb").glob("wandb/offline-run-*")) + list((run / "wandb").glob("offline-run-*"))
    assert runs, list((run / "wandb").rglob("*"))[:10]
    # Offline runs keep their history in the run's .wandb record file (wandb sync uploads it later).
    records = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    for key in ("train/loss", "train/tokens_per_s", "train/peak_memory_mb", "train/cost", "eval/loss"):
        assert key.encode() in records, key


def test_max_time_stops_with_time_budget_and_a_usable_adapter(small_llama, pirate_rows, tmp_path):
    from finetune.recipe import parse_recipe
    from finetune.train import train

    spec = recipe_dict(str(small_llama), pirate_rows, max_steps=100000, max_time="20s", save_steps=100000)
    began = time.monotonic()
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", say=lambda *_: None)
    took = time.monotonic() - began
    assert summary["status"] == "time_budget"
    assert took < 20 + 2, f"the budget is 20 s; the run took {took:.1f} s"
    # And from below: the budget (counted from the command's start) is used, not given up early. The stop
    # leaves room for one step and two saves (~1.5 steps + 2 x 2 s + 3 s here), so a run that quits after its
    # first step (model loading + one step: ~5 s) fails here.
    assert took >= 20 / 2, f"stopped after {took:.1f} s of a 20 s budget"
    assert 0 < summary["steps"] < 100000  # how many fit depends on the machine; the time used does not
    logged = [r["step"] for r in metrics(tmp_path / "run") if r.get("loss") is not None]
    assert logged == list(range(1, summary["steps"] + 1)), "every step up to the stop is in metrics.jsonl"
    assert (tmp_path / "run/checkpoints" / f"checkpoint-{summary['steps']}").is_dir()
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(tmp_path / "run/adapter").r == 8


def fitted_run(model, rows, tmp_path) -> tuple[dict, float]:
    """A 20 s budget with fit_to_budget and a cosine schedule, trained in this process: (summary, seconds)."""
    from finetune.recipe import parse_recipe
    from finetune.train import train

    spec = recipe_dict(str(model), rows, max_steps=100000, max_time="20s", save_steps=100000,
                       fit_to_budget=True, lr_scheduler="cosine", warmup_ratio=0.0)
    began = time.monotonic()
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", say=lambda _: None)
    return summary, time.monotonic() - began


def test_fit_to_budget_ends_a_decayed_schedule_inside_the_budget(small_llama, pirate_rows, tmp_path):
    """training.fit_to_budget: the schedule is shortened after timing the first steps, and completes in time."""
    summary, took = fitted_run(small_llama, pirate_rows, tmp_path)
    assert summary["status"] == "completed", summary["message"]  # not stopped by the budget: the schedule ended
    schedule = summary["schedule"]
    assert schedule["fitted_to_budget"] and schedule["planned_steps"] == 100000
    assert summary["steps"] == schedule["steps"] == summary["max_steps"] < 100000
    assert took < 20 + 2, f"the budget is 20 s; the run took {took:.1f} s"
    assert took >= 20 / 2, f"fitted to {took:.1f} s of a 20 s budget"
    rates = [r["learning_rate"] for r in metrics(tmp_path / "run") if r.get("learning_rate") is not None]
    # A cosine over the fitted steps: the last step's rate is near zero, not the 1e-3 a cut-off run would have.
    assert rates[-1] < 0.05 * 1e-3, rates[-5:]
    assert summary["eval_loss"] is not None  # the evaluation at the end ran inside the budget too


def test_a_fitted_schedule_is_shortened_again_when_the_steps_slow_down(small_llama, pirate_rows, tmp_path,
                                                                       monkeypatch, capfd):
    """Another job starts on the machine once the schedule is fitted: every step then takes three times as long.
    The fit is checked again as the run goes, so the schedule still ends, decayed, inside the budget."""
    from finetune.trainer import RunState

    timed_step_at_fit: list[float] = []
    should_stop = RunState.should_stop

    def slower_once_fitted(self, step, last_step=None):  # noqa: ANN001
        if self.fit_checked:  # the step just trained took longer: the wait is inside its measured time
            if not timed_step_at_fit:
                timed_step_at_fit.append(sum(self.step_times[1:]) / len(self.step_times[1:]))
            time.sleep(2 * timed_step_at_fit[0])
        return should_stop(self, step, last_step)

    monkeypatch.setattr(RunState, "should_stop", slower_once_fitted)
    summary, took = fitted_run(small_llama, pirate_rows, tmp_path)
    out = "".join(capfd.readouterr())
    assert summary["status"] == "completed", (summary["message"], out)  # the budget's hard stop never fired
    assert "steps ran slower" in out, out
    assert took < 20 + 2, f"the budget is 20 s; the run took {took:.1f} s"
    rates = [r["learning_rate"] for r in metrics(tmp_path / "run") if r.get("learning_rate") is not None]
    assert rates[-1] < 0.05 * 1e-3, rates[-5:]  # decayed to the end of the shortened schedule


def test_a_resumed_run_keeps_the_schedule_it_was_fitted_to(small_llama, pirate_rows, tmp_path):
    recipe = write_recipe(tmp_path, small_llama, pirate_rows, max_steps=100000, max_time="40s", save_steps=100000,
                          fit_to_budget=True, lr_scheduler="cosine", warmup_ratio=0.0)
    run = tmp_path / "run"
    proc = start(recipe, run)
    assert wait_for(lambda: len(metrics(run)) >= 8), proc.stdout.read() if proc.poll() is not None else "no steps"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "the schedule now ends at step" in out, out
    first = json.loads((run / "summary.json").read_text())
    fitted = first["schedule"]["steps"]
    assert first["status"] == "interrupted" and first["schedule"]["fitted_to_budget"] and first["steps"] < fitted
    rates = {r["step"]: r["learning_rate"] for r in metrics(run) if r.get("learning_rate") is not None}

    # A new, roomier budget: the fitted schedule is kept, neither fitted again nor grown. (With another 40 s the
    # remaining steps plus reloading can need more than the budget on a fast CPU, and shortening is then right:
    # on the AMX machine the fit planned 287 steps of 0.07 s and the resumed run, at 0.09 s, ended at 274.)
    resumed = start(recipe, run, "--resume", "--set", "training.max_time=120s")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "the schedule now ends" not in out, out
    final = json.loads((run / "summary.json").read_text())
    assert final["status"] == "completed" and final["steps"] == final["max_steps"] == fitted
    assert final["schedule"] == {"planned_steps": 100000, "steps": fitted, "fitted_to_budget": True}
    after = {r["step"]: r["learning_rate"] for r in metrics(run) if r.get("learning_rate") is not None}
    stop = first["steps"]
    # The cosine continues where it was: the first resumed step's rate follows the last one before the stop.
    assert after[stop + 1] < rates[stop] and after[stop + 1] > 0.5 * rates[stop], (rates[stop], after[stop + 1])
    assert after[fitted] < 0.05 * 1e-3

    # Trained further, as the completed run's refusal advises: --max-steps overrides the fitted schedule (it
    # took the fitted length as the last step and finished without training).
    further = start(recipe, run, "--resume", "--max-steps", str(fitted + 2), "--set", "training.max_time=120s")
    out, _ = further.communicate(timeout=300)
    assert further.returncode == 0, out
    assert json.loads((run / "summary.json").read_text())["steps"] == fitted + 2, out
    assert [r["step"] for r in metrics(run) if r.get("loss") is not None][-2:] == [fitted + 1, fitted + 2]


def test_sigterm_saves_reports_interrupted_and_resumes_to_completion(small_llama, pirate_rows, tmp_path):
    recipe = write_recipe(tmp_path, small_llama, pirate_rows, max_steps=300, save_steps=100000)
    run = tmp_path / "run"
    proc = start(recipe, run)
    assert wait_for(lambda: len(metrics(run)) >= 3), proc.stdout.read() if proc.poll() is not None else "no steps"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["steps"] < 300
    assert (run / "checkpoints" / f"checkpoint-{summary['steps']}").is_dir(), "a checkpoint at the stop step"
    assert (run / "adapter/adapter_model.safetensors").is_file()

    resumed = start(recipe, run, "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    final = json.loads((run / "summary.json").read_text())
    assert final["status"] == "completed" and final["steps"] == 300
    steps = [r["step"] for r in metrics(run) if r.get("loss") is not None]
    assert steps == sorted(set(steps)) and steps[-1] == 300, "metrics continue without duplicates"


def test_sigkill_then_resume_matches_an_uninterrupted_run(small_llama, pirate_rows, tmp_path):
    recipe = write_recipe(tmp_path, small_llama, pirate_rows, max_steps=40, save_steps=10, save_total_limit=2)
    spec = yaml.safe_load(recipe.read_text())
    spec["cost"] = {"hourly_rate": {"amount": 36.0, "currency": "USD"}}  # 1 cent a second: cost tracks wall time
    recipe.write_text(yaml.safe_dump(spec))
    reference = start(recipe, tmp_path / "reference")
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out

    run = tmp_path / "killed"
    proc = start(recipe, run)
    assert wait_for(lambda: (run / "checkpoints/checkpoint-20").is_dir() or proc.poll() is not None)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    proc.communicate()
    assert not (run / "summary.json").exists() or json.loads((run / "summary.json").read_text())["steps"] < 40
    killed_lines = metrics(run)
    killed_elapsed = max(r["elapsed_s"] for r in killed_lines)
    resumed = start(recipe, run, "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40

    # The resumed process started from the checkpoint, not from step 1: it says so, and its own records
    # (those past the checkpoint) begin right after it. A --resume that ignored the checkpoint would log
    # steps 1..N a second time (the seeded losses would match: comparing losses alone cannot tell).
    match = re.search(r"resuming from \S*checkpoint-(\d+)", out)
    assert match, out
    resumed_from = int(match.group(1))
    assert resumed_from >= 20
    lines = metrics(run)
    steps = [r["step"] for r in lines if r.get("loss") is not None]
    assert steps == list(range(1, 41)), "each step exactly once, in order"
    evals = [r["step"] for r in lines if r.get("eval_loss") is not None and r.get("loss") is None]
    assert len(evals) == len(set(evals)), f"an evaluation logged twice: {evals}"
    assert lines[: len([r for r in killed_lines if r["step"] <= resumed_from])] == \
        [r for r in killed_lines if r["step"] <= resumed_from], "records before the checkpoint are kept as written"
    state = json.loads((run / "checkpoints/checkpoint-40/trainer_state.json").read_text())
    assert state["global_step"] == 40
    state_steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert state_steps == list(range(1, 41)), "the trainer's own history continues from the checkpoint"

    # Wall time and cost carry across the two processes: the resumed records continue the first's clock.
    ledger = json.loads((run / f"checkpoints/checkpoint-{resumed_from}/finetune_ledger.json").read_text()) \
        if (run / f"checkpoints/checkpoint-{resumed_from}").is_dir() else None
    first_after = next(r for r in lines if r.get("loss") is not None and r["step"] == resumed_from + 1)
    before = next(r for r in lines if r.get("loss") is not None and r["step"] == resumed_from)
    assert first_after["elapsed_s"] > before["elapsed_s"], "the clock restarted at 0 in the resumed process"
    if ledger is not None:
        assert ledger["elapsed_before_s"] >= before["elapsed_s"] - 1
    assert summary["wall_time_s"] > before["elapsed_s"] and summary["wall_time_s"] >= killed_elapsed * 0.9
    assert summary["cost"]["amount"] == pytest.approx(summary["wall_time_s"] / 100, rel=0.05, abs=0.02)
    if summary["energy_wh"] is not None:  # measured only where a power reading exists (GPUs, RAPL)
        assert summary["energy_wh"] >= (before.get("energy_wh") or 0)

    want = {r["step"]: r["loss"] for r in metrics(tmp_path / "reference") if r.get("loss") is not None}
    got = {r["step"]: r["loss"] for r in lines if r.get("loss") is not None}
    for step in range(1, 41):
        assert abs(got[step] - want[step]) <= 1e-3 * max(1.0, abs(want[step])), (step, got[step], want[step])


def test_non_finite_loss_stops_as_diverged_and_keeps_the_last_good_checkpoint(small_llama, pirate_rows, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from finetune.recipe import parse_recipe
    from finetune.train import train

    class PoisonAfterStep4(TrainerCallback):
        """Fault injection: a NaN lands in one LoRA weight after step 4, as an overflow would put it there."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 4:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))

    spec = recipe_dict(str(small_llama), pirate_rows, max_steps=40, save_steps=2, save_total_limit=3)
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", callbacks=[PoisonAfterStep4()],
                    say=lambda *_: None)
    assert summary["status"] == "diverged"
    assert summary["steps"] == 4 + 3, "stops after divergence_patience (3) non-finite steps"
    assert "from step 5" in summary["message"] and "lower learning_rate" in summary["message"]
    saved = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert saved == ["checkpoint-2"], f"no checkpoint with poisoned weights may be written: {saved}"
    adapter = load_file(tmp_path / "run/adapter/adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in adapter.values()), "the adapter is the last good one"
