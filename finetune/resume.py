"""What `--resume` may continue: an intact checkpoint, the same recipe and data, a run not yet finished."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune.errors import RunError
from finetune.recipe import Recipe
from finetune.runs import LEDGER_FILE, checkpoints, read_summary

# Keys a resume may change without --force: they steer the night, not what is learned.
RUN_CONTROL_KEYS = (
    "training.max_steps", "training.max_time", "training.fit_to_budget", "training.save_steps", "training.save_minutes",
    "training.save_total_limit", "training.logging_steps", "training.eval_steps", "training.divergence_patience",
    "tracking.", "cost.",
)
# Keys no resume may change, --force or not: the checkpoint's LoRA weights and optimizer state have their
# shapes (lora.r), their set of modules (lora.target_modules) and their base's layer sizes (base_model), so
# transformers fails to load it after the model is built. Measured (a tiny llama, peft 0.21): quantization.bits
# (4, 8, none) leaves every LoRA tensor's shape alone; lora.alpha and lora.dropout are no tensor at all; --force
# takes those.
SHAPE_KEYS = ("base_model", "lora.r", "lora.target_modules")
_CHECKPOINT_FILES = ("adapter_model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def recipe_changes(saved: dict[str, Any], recipe: Recipe) -> list[str]:
    """'key: old -> new' for each key that differs from the run's saved recipe, run-control keys aside."""
    old, new = _flatten(saved), _flatten(recipe.model_dump(mode="json"))
    changed = []
    for key in sorted(old.keys() | new.keys()):
        if key.startswith(RUN_CONTROL_KEYS) or old.get(key) == new.get(key):
            continue
        show = (json.dumps(old.get(key), ensure_ascii=False), json.dumps(new.get(key), ensure_ascii=False))
        changed.append(f"{key}: {show[0]} -> {show[1]}")
    return changed


def recorded_dataset_sha256(run_dir: Path, checkpoint: Path | None) -> str | None:
    """The dataset hash the run started with: in its checkpoint's ledger, else in its summary."""
    if checkpoint is not None:
        try:
            extra = json.loads((checkpoint / LEDGER_FILE).read_text()).get("extra") or {}
            if extra.get("dataset_sha256"):
                return extra["dataset_sha256"]
        except (OSError, ValueError, AttributeError):
            pass
    return (read_summary(run_dir) or {}).get("dataset_sha256")


def saved_recipe(run_dir: Path) -> dict[str, Any] | None:
    """The run's recipe.yaml as a mapping (None when there is none, or it cannot be read as one)."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


def check_same_run(
    run_dir: Path, recipe: Recipe, dataset_sha256: str, checkpoint: Path | None, force: bool,
    say: Callable[[str], None],
) -> None:
    """Refuse (unless --force) to resume with another recipe or other data than the run started with.

    A change to a key in SHAPE_KEYS is refused even with --force: the checkpoint could not be loaded.
    """
    problems = []
    saved = saved_recipe(run_dir)
    if saved is not None:
        changes = recipe_changes(saved, recipe)
        fixed = [change for change in changes if change.split(":", 1)[0] in SHAPE_KEYS]
        if fixed:
            raise RunError(f"{run_dir}: cannot resume with {'; '.join(fixed)}, even with --force: the checkpoint "
                           "holds LoRA weights of the run's shape, which this model cannot load; resume with the "
                           "original value, or train a new run (another name, or --force without --resume)")
        if changes:
            problems.append("the recipe differs from the run's recipe.yaml: " + "; ".join(changes))
    recorded = recorded_dataset_sha256(run_dir, checkpoint)
    if recorded and recorded != dataset_sha256:
        problems.append(f"{recipe.dataset.path} changed since the run started "
                        f"(sha256 {recorded[:12]}... -> {dataset_sha256[:12]}...)")
    if not problems:
        return
    if not force:
        raise RunError(f"{run_dir}: cannot resume: {'; and '.join(problems)}. Resume with the original recipe "
                       "and data, or pass --force to continue with these")
    say(f"warning: resuming anyway (--force): {'; and '.join(problems)}")


def finished_summary(run_dir: Path, max_steps: int | None) -> dict[str, Any] | None:
    """The summary of a run that already completed (and that --max-steps does not extend), else None."""
    summary = read_summary(run_dir)
    if not summary or summary.get("status") != "completed":
        return None
    if max_steps is not None and max_steps > (summary.get("steps") or 0):
        return None
    return summary


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What makes a checkpoint unusable for resuming (missing, truncated or unreadable files), or None."""
    from safetensors import safe_open

    for name in _CHECKPOINT_FILES:
        if not (checkpoint / name).is_file() or (checkpoint / name).stat().st_size == 0:
            return f"{name} is missing"
    try:
        with safe_open(checkpoint / "adapter_model.safetensors", "pt") as weights:
            weights.keys()  # the header is checked against the file's length: a truncated file fails here
    except Exception as exc:  # safetensors raises its own error type for every kind of damage
        return f"adapter_model.safetensors is unreadable: {exc}"
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        if state["global_step"] != int(checkpoint.name.rsplit("-", 1)[-1]):
            return "trainer_state.json names another step"
    except (OSError, ValueError, KeyError, TypeError):
        return "trainer_state.json is unreadable"
    for name in ("optimizer.pt", "scheduler.pt"):
        if not zipfile.is_zipfile(checkpoint / name):  # torch.save writes a zip; a cut one has no directory
            return f"{name} is truncated"
    return None


def pick_checkpoint(folder: Path, say: Callable[[str], None]) -> Path | None:
    """The newest intact checkpoint, saying which damaged ones were passed over."""
    for checkpoint in reversed(checkpoints(folder)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        say(f"warning: {checkpoint.name} is damaged ({problem}); falling back to the checkpoint before it")
    return None


def checkpoint_is_final(checkpoint: Path, max_steps: int) -> bool:
    """Whether a checkpoint already holds the run's last step (`max_steps` <= 0: the step count it saved)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    target = max_steps if max_steps > 0 else int(state.get("max_steps") or 0)
    return target > 0 and state["global_step"] >= target


def restore_final(trainer: Any, checkpoint: Path, metrics: list[dict[str, Any]]) -> None:
    """Load a final checkpoint's weights and state into the trainer, so the run finishes without training.

    transformers' loop would train one step past max_steps when resumed at it; an evaluation already logged
    at that step (by the process that was stopped while finishing) is reused rather than logged twice.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    set_peft_model_state_dict(trainer.model, load_file(checkpoint / "adapter_model.safetensors"))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    step = trainer.state.global_step
    logged = [r for r in metrics if r.get("step") == step and r.get("eval_loss") is not None and r.get("loss") is None]
    if logged and not any("eval_loss" in h and h.get("step") == step for h in trainer.state.log_history):
        trainer.state.log_history.append({"eval_loss": logged[-1]["eval_loss"], "step": step})
