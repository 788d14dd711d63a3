"""Run folders: creating them safely, checkpoints, the summary.json schema, and listing runs."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from finetune import atomic
from finetune.errors import RunError
from finetune.paths import outputs_dir
from finetune.recipe import Recipe

CHECKPOINTS = "checkpoints"
LEDGER_FILE = "finetune_ledger.json"
SUMMARY_SCHEMA_VERSION = 3  # 2 added peak_memory_by_phase_mb, 3 added schedule
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def run_dir_for(recipe: Recipe, output_dir: str | Path | None = None) -> Path:
    """The run folder: --output-dir, else outputs/<name>."""
    return Path(output_dir) if output_dir else outputs_dir() / recipe.name


# What a run writes first (recipe.yaml at once): a folder with none of these is not a run's.
RUN_MARKS = ("recipe.yaml", "summary.json", "metrics.jsonl", CHECKPOINTS)
# `finetune train`'s exit code for each summary status.
STATUS_EXIT = {"completed": 0, "time_budget": 0, "interrupted": 130, "diverged": 3, "failed": 1}


def prepare_run_dir(
    recipe: Recipe, output_dir: str | Path | None, *, force: bool, resume: bool, is_main: bool = True
) -> Path:
    """Create (or reuse for --resume) the run folder; never clobber an earlier run without --force."""
    run_dir = run_dir_for(recipe, output_dir)
    _refuse_files_in_the_way(run_dir)
    if resume:
        if not run_dir.is_dir():
            raise RunError(f"{run_dir}: no such run to resume")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not any((run_dir / mark).exists() for mark in RUN_MARKS):
            # --force empties a run folder; a folder of other files (a mistyped --output-dir) is never emptied.
            raise RunError(f"{run_dir}: not empty and not a run folder (no recipe.yaml, summary.json or "
                           f"{CHECKPOINTS}/); choose a new or empty --output-dir")
        if not force:
            raise RunError(f"{run_dir}: {_occupied(run_dir)}")
        if is_main:  # empty it, but keep the folder itself: it carries the run lock (finetune.runlock)
            for child in run_dir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_writable(run_dir)
        atomic.write_text(run_dir / "recipe.yaml", recipe.to_yaml())
    return run_dir


def _refuse_files_in_the_way(run_dir: Path) -> None:
    """A one-line error where the run folder, or a folder above it, is a file (mkdir would raise a traceback)."""
    for folder in (run_dir, *run_dir.parents):
        if folder.exists() and not folder.is_dir():
            raise RunError(f"{run_dir}: is a file, not a run folder" if folder == run_dir
                           else f"{run_dir}: {folder} is a file, not a folder")


def _occupied(run_dir: Path) -> str:
    """What an existing run folder holds and what to do about it, worded by the run's state."""
    summary = read_summary(run_dir)
    status = summary.get("status") if summary else None
    resumable = latest_checkpoint(run_dir / CHECKPOINTS) is not None
    if status == "completed":
        # --resume alone finds nothing to do in a completed run; a larger --max-steps trains on from its end.
        further = (f", or --resume --max-steps N (more than its {summary.get('steps') or 0} steps) to train it further"
                   if resumable else "")
        return f"holds a completed run; use --force to train it again from the start{further}"
    what = f"{'an' if str(status)[:1] in 'aeiou' else 'a'} {status} run" if status else "an earlier run"
    hint = "--resume to continue it, or " if resumable else ""
    return f"holds {what}; use {hint}--force to overwrite it"


def _check_writable(run_dir: Path, needed_bytes: int = 200 * 2**20) -> None:
    """Fail now, not hours later, if the folder is not writable or the disk is nearly full."""
    probe = run_dir / ".write-test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"{run_dir}: not writable ({exc.strerror})") from None
    free = shutil.disk_usage(run_dir).free
    if free < needed_bytes:
        raise RunError(f"{run_dir}: only {free / 2**20:.0f} MB free; checkpoints need about "
                       f"{needed_bytes / 2**20:.0f} MB")


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in a folder, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (checkpoints are renamed into place only when whole)."""
    found = checkpoints(folder)
    return found[-1] if found else None


def remove_incomplete_checkpoints(folder: Path) -> None:
    """Drop the staging areas a killed run may have left; put back a checkpoint a killed swap left aside."""
    shutil.rmtree(folder / ".staging", ignore_errors=True)
    for leftover in folder.glob(".checkpoint-*"):  # ".checkpoint-N.staging-..." or ".checkpoint-N.aside"
        atomic.recover_dir(folder / leftover.name[1:].split(".", 1)[0])


def trim_metrics(path: Path, last_step: int) -> str | None:
    """On resume, drop metrics lines past the checkpoint: those steps are trained again. Returns the file's
    text before (None when there is no file), for a resume that fails before training to put back."""
    if not path.exists():
        return None
    before = path.read_text(encoding="utf-8")
    kept = [r for r in atomic.read_jsonl(path) if r.get("step", 0) <= last_step]
    atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return before


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("finetune", "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


class _Fixed(BaseModel):
    """A part of summary.json: every field required, no others allowed, not changed after it is built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Examples(_Fixed):
    """Rows trained on and evaluated: each split less the rows max_length cuts to no reply."""

    train: int
    eval: int


class Cost(_Fixed):
    """What the run cost, priced by the recipe's cost section (finetune/cost.py run_cost)."""

    amount: float | None
    currency: str
    basis: str
    estimated: bool


class HardwareInfo(_Fixed):
    """The device the run trained on."""

    device: Literal["cuda", "cpu"]
    name: str
    features: list[str]


class PhasePeaks(_Fixed):
    """Peak memory (MB) of each phase, measured like peak_memory_mb; None for a phase the run did not reach."""

    load: float | None
    train: float | None
    eval: float | None
    save: float | None


class PackingInfo(_Fixed):
    """Whether the run packed rows without padding (training.packing) and why (finetune/packing.py)."""

    enabled: bool
    reason: str
    memory_kept: bool = False  # glibc kept freed blocks for the next step (finetune/allocator.py)


class ScheduleInfo(_Fixed):
    """The learning-rate schedule's length: as planned, and as fitted to a time budget (training.fit_to_budget)."""

    planned_steps: int
    steps: int
    fitted_to_budget: bool


class Summary(_Fixed):
    """summary.json, schema_version 3: every field is documented in docs/runs.md."""

    schema_version: Literal[3] = SUMMARY_SCHEMA_VERSION
    name: str
    status: Literal["completed", "interrupted", "time_budget", "diverged", "failed"]
    message: str | None
    steps: int
    max_steps: int
    schedule: ScheduleInfo
    learning_rate: float | None
    epochs: float
    examples: Examples
    tokens: int
    train_loss: float | None
    eval_loss: float | None
    wall_time_s: float
    seconds_per_step: float | None
    tokens_per_s: float | None
    time_to_first_step_s: float | None
    peak_memory_mb: float
    peak_memory_by_phase_mb: PhasePeaks
    energy_wh: float | None
    cost: Cost | None
    hardware: HardwareInfo
    precision: Literal["bf16", "fp16", "fp32"]
    gradient_checkpointing: bool
    packing: PackingInfo | None
    quantization: Literal[4, 8] | None
    num_processes: int
    strategy: Literal["none", "ddp", "fsdp", "zero2", "zero3"]
    versions: dict[str, str]
    recipe_sha256: str
    dataset_sha256: str
    base_model: str
    adapter: str | None
    started_at: str
    finished_at: str


def build_summary(
    *, recipe: Recipe, run_dir: Path, run_state: Any, telemetry: Any, trainer_state: Any, hw: Any,
    precision: str, checkpointing: bool, num_processes: int, strategy: str, eval_loss: float | None,
    started: datetime, dataset_sha256: str, train_rows: int, eval_rows: int,
) -> dict[str, Any]:
    """summary.json's content, validated against `Summary` (docs/runs.md documents every field)."""
    losses = [h["loss"] for h in trainer_state.log_history if "loss" in h]
    last = telemetry.last_line
    wall = telemetry.elapsed()
    energy = last.get("energy_wh")
    utilisation = (last.get("gpu_util") or 0) / 100 if last.get("gpu_util") is not None else None
    phases = telemetry.phases.by_phase()
    # Each phase restarts the peak counter, so the run's peak is the largest of theirs (and earlier sessions').
    peak = max(telemetry.ledger.peak_memory_mb, last.get("peak_memory_mb") or 0, *(v or 0 for v in phases.values()))
    summary = Summary(
        name=recipe.name,
        status=run_state.status,
        message=run_state.message,
        steps=trainer_state.global_step,
        max_steps=trainer_state.max_steps,
        schedule=ScheduleInfo(
            planned_steps=getattr(run_state, "planned_steps", None) or trainer_state.max_steps,
            steps=trainer_state.max_steps,
            fitted_to_budget=getattr(run_state, "schedule_steps", None) is not None,
        ),
        learning_rate=getattr(run_state, "learning_rate", None),
        epochs=round(trainer_state.epoch or 0.0, 4),
        examples=Examples(train=train_rows, eval=eval_rows),
        tokens=int(getattr(trainer_state, "num_input_tokens_seen", 0) or 0),
        train_loss=losses[-1] if losses else None,
        eval_loss=eval_loss,
        wall_time_s=round(wall, 2),
        seconds_per_step=last.get("seconds_per_step"),
        tokens_per_s=last.get("tokens_per_s"),
        time_to_first_step_s=None if run_state.first_step_s is None else round(run_state.first_step_s, 2),
        peak_memory_mb=round(peak, 1),
        peak_memory_by_phase_mb=PhasePeaks(**phases),
        energy_wh=energy,
        cost=telemetry.cost(wall, energy, utilisation),
        hardware=HardwareInfo(device=hw.device, name=hw.name, features=list(hw.features)),
        precision=precision,
        gradient_checkpointing=checkpointing,
        packing=PackingInfo(**run_state.packing.summary()) if getattr(run_state, "packing", None) else None,
        quantization=recipe.quantization.bits,
        num_processes=num_processes,
        strategy=strategy,
        versions=library_versions(),
        recipe_sha256=recipe.sha256(),
        dataset_sha256=dataset_sha256,
        base_model=recipe.base_model,
        adapter=str(run_dir / "adapter") if (run_dir / "adapter").is_dir() else None,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now().astimezone().isoformat(timespec="seconds"),
    )
    # Through pydantic's JSON: a non-finite loss (a diverged run) becomes null, so summary.json stays valid JSON.
    return json.loads(summary.model_dump_json())


MERGE_FILE = "merge.json"  # what marks a merge-adapters output, shaped like a run (recipe.yaml, adapter/)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's summary.json, or None; its `adapter` is where the folder is now (a copied or moved run's summary
    named the adapter where it was trained)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None  # a JSON list or number is no summary either
    if isinstance(summary.get("adapter"), str) and (run_dir / "adapter").is_dir():
        summary["adapter"] = str((run_dir / "adapter").resolve())
    return summary


def resolve_run(name_or_path: str) -> Path:
    """A run folder from a name in outputs/ or a path."""
    path = Path(name_or_path)
    folders = [c for c in (path, outputs_dir() / name_or_path) if c.is_dir()]
    for candidate in folders:
        if (candidate / "recipe.yaml").is_file() or (candidate / "adapter").is_dir():
            return candidate
    if folders:  # there, but not a run: say what it is instead of "no such run"
        adapter_folder = (folders[0] / "adapter_config.json").is_file()
        what = ("an adapter folder (an export, or a merge-adapters output written before 2026-12-05), not a run; "
                "`finetune chat` and `finetune generate` take it as it is" if adapter_folder
                else "a folder, but not a run (no recipe.yaml or adapter/)")
        raise RunError(f"{folders[0]}: {what}")
    raise RunError(f"{name_or_path}: no such run (looked in . and {outputs_dir()})")


def list_runs(*folders: Path) -> list[dict[str, Any]]:
    """Summaries of the runs in outputs/ (or in `folders`: run folders or folders of runs), newest first.

    Newest by the summary's finished_at (else started_at): a folder's mtime changes whenever anything is
    written into it later (an export, a compare), so it orders only runs without a readable time. A run
    without a summary is running or was killed; one whose summary.json cannot be read says so.
    """
    rows = []
    candidates: list[Path] = []
    for folder in folders or (outputs_dir(),):
        if folders and not folder.is_dir():
            raise RunError(f"{folder}: no such folder")
        is_run = (folder / "recipe.yaml").is_file()
        candidates += [folder] if is_run else sorted(folder.iterdir()) if folder.is_dir() else []
    for run_dir in dict.fromkeys(candidates):
        if not run_dir.is_dir() or not (run_dir / "recipe.yaml").is_file():
            continue
        summary = read_summary(run_dir)
        if summary is None:
            status = ("unreadable summary.json" if (run_dir / "summary.json").exists()
                      else "merged (merge-adapters)" if (run_dir / MERGE_FILE).is_file()
                      else "no summary (running or killed)")
            summary = {"name": run_dir.name, "status": status}
        summary.setdefault("name", run_dir.name)
        summary["_dir"] = str(run_dir)
        summary["_mtime"] = os.path.getmtime(run_dir)
        rows.append(summary)
    return sorted(rows, key=_run_time, reverse=True)


def _run_time(row: dict[str, Any]) -> float:
    """When a listed run ended (or began), as a timestamp; the folder's mtime where the summary says neither."""
    for key in ("finished_at", "started_at"):
        try:
            return datetime.fromisoformat(str(row[key])).timestamp()
        except (KeyError, ValueError, TypeError):
            continue
    return row["_mtime"]
