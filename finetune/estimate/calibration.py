"""Measuring this machine: a probe's or a finished run's steps against the prediction, kept per machine."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.estimate.assumptions import Assumptions
from finetune.estimate.devices import Device, run_setups
from finetune.estimate.memory import memory
from finetune.estimate.shape import ModelShape
from finetune.estimate.speed import seconds_per_micro_batch
from finetune.estimate.tokens import Tokens
from finetune.hardware import machine_key

if TYPE_CHECKING:
    from finetune.recipe import Recipe


def predicted_step(recipe: Recipe, shape: ModelShape, device: Device, measured: dict[str, Any],
                   tokens: Tokens, utilisation: float, a: Assumptions) -> dict[str, float]:
    """What the model predicts for a probe's steps: seconds per optimizer step and peak memory (MiB).

    The probe reports real (non-padding) tokens per optimizer step; the time prediction spreads them over
    batch x accumulation rows. Its peak memory comes from its first, longest batch (length-grouped
    sampling starts with the longest rows), or packed, from the largest of the batches it ran (`steps`).
    """
    t = recipe.training
    rows = t.batch_size * t.gradient_accumulation
    precision = measured.get("precision") or device.best_precision
    checkpointing = bool(measured.get("gradient_checkpointing", False))
    ran = measured.get("steps")
    peak_setup, average = run_setups(recipe, device, tokens, shape=shape,
                                     first_batches=ran * t.gradient_accumulation if ran else None, whole_run=False)
    peak_setup = replace(peak_setup, precision=precision, checkpointing=checkpointing)
    seq = max(1, round(measured["tokens_per_step"] / rows))
    average = replace(average, precision=precision, checkpointing=checkpointing, seq=seq)
    peak = device.peak_tflops.get(precision) or device.peak_tflops["fp32"]
    seconds = seconds_per_micro_batch(shape, average, peak, utilisation, a) * t.gradient_accumulation
    # The probe reports what a run does: on CUDA torch's allocated peak, without the context and margin.
    measured_gb = memory(shape, peak_setup, a).measured_gb
    return {"seconds_per_step": seconds, "peak_memory_mb": measured_gb * 1024, "seq": seq, "peak_seq": peak_setup.seq}


def _sig(seconds: float) -> float:
    """Seconds to five significant figures: a fixed number of decimals lost a tenth of a percent of a
    millisecond step, enough that the stored figures no longer gave back the stored factor."""
    return float(f"{seconds:.5g}")


def speed_factor(predicted_seconds: float, measured_seconds: float) -> float:
    """Measured over predicted step time: how much slower (>1) or faster this machine is than assumed.

    Calibration scales the whole step, the per-step overhead with the compute: a busy or slow machine
    dispatches ops more slowly too (on the shared reference machine both grew ~10x under load, while
    the ratio between two configurations' step times held).
    """
    if measured_seconds <= 0 or predicted_seconds <= 0:
        return 1.0
    return measured_seconds / predicted_seconds


def calibrate_utilisation(predicted_seconds: float, measured_seconds: float, assumed: float) -> float:
    """The utilisation that makes a predicted step time match a measured one."""
    return assumed / speed_factor(predicted_seconds, measured_seconds)


SPEED_FILE = "speed.json"


def remember_speed(factor: float, recipe_name: str) -> dict[str, Any]:
    """Store a probe's speed factor for this machine ($FINETUNE_HOME/speed.json) and return the record.

    Later estimates here, and `finetune train`'s two-line estimate, scale this machine's times by it: an
    uncalibrated CPU estimate can be 2x off (docs/estimate.md), a probed one was within 25%.
    """
    from datetime import datetime

    from finetune import atomic
    from finetune.paths import finetune_home

    record = {"key": machine_key(), "speed_factor": round(factor, 4), "recipe": recipe_name,
              "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"), "source": "probe"}
    try:
        atomic.write_json(finetune_home() / SPEED_FILE, record)
    except OSError:
        pass  # a read-only cache costs later estimates their calibration, not this one its answer
    return record


def remembered_speed() -> dict[str, Any] | None:
    """The speed factor a probe stored for this machine, or None (none yet, another machine or torch)."""
    from finetune.paths import finetune_home

    try:
        record = json.loads((finetune_home() / SPEED_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != machine_key():
        return None
    factor = record.get("speed_factor")
    return {**record, "source": "probe"} if isinstance(factor, (int, float)) and factor > 0 else None


def compare_probe(recipe: Recipe, shape: ModelShape, device: Device, measured: dict[str, Any], tokens: Tokens,
                  a: Assumptions) -> dict[str, Any]:
    """A probe's measured steps on this machine (finetune.train.run_probe's dict) against the prediction.

    The caller runs the probe (the estimate CLI): the estimate never imports the training path.
    """
    assumed = a.utilisation if device.kind == "cuda" else a.cpu_utilisation
    predicted = predicted_step(recipe, shape, device, measured, tokens, assumed, a)
    factor = speed_factor(predicted["seconds_per_step"], measured["seconds_per_step"])
    return {
        "device": device.name,
        "measured": {k: measured.get(k) for k in ("seconds_per_step", "tokens_per_step", "peak_memory_mb",
                                                  "precision", "device", "gradient_checkpointing")},
        "predicted": {"seconds_per_step": _sig(predicted["seconds_per_step"]),
                      "peak_memory_mb": round(predicted["peak_memory_mb"], 1)},
        "memory_error": round(predicted["peak_memory_mb"] / measured["peak_memory_mb"] - 1, 4)
        if measured.get("peak_memory_mb") else None,
        "utilisation_assumed": assumed,
        "speed_factor": round(factor, 4),
        "utilisation_calibrated": round(assumed / factor, 4),
    }


# --- learning from finished runs ------------------------------------------------------------------------

RUNS_FILE = "runs_calibration.json"
MAX_RUN_RECORDS = 100  # the newest runs per home: enough for every model, precision and length in use


def achieved_speed(metrics: list[dict[str, Any]]) -> dict[str, float] | None:
    """Seconds and non-padding tokens per optimizer step a run achieved, from its metrics.jsonl records.

    Training lines only, after the first: the first interval holds loading and the first step's warm-up,
    an evaluation's time lands in its own line (the telemetry restarts its interval at every line).
    """
    seconds = steps = tokens = 0.0
    previous: dict[str, Any] | None = None
    for record in metrics:
        is_training = record.get("loss") is not None and record.get("seconds_per_step") is not None
        if is_training and previous is not None and record["step"] > previous["step"]:
            span = record["step"] - previous["step"]
            seconds += record["seconds_per_step"] * span
            steps += span
            tokens += max(0, record.get("tokens", 0) - previous.get("tokens", 0))
        previous = record
    if steps == 0 or seconds <= 0:
        return None
    return {"seconds_per_step": seconds / steps, "tokens_per_step": tokens / steps, "steps": steps}


def predicted_run_step(recipe: Recipe, shape: ModelShape, device: Device, tokens: Tokens,
                       a: Assumptions) -> dict[str, float]:
    """The plan's uncalibrated figures for a recipe here: seconds per optimizer step and peak memory (MiB)."""
    setup, average = run_setups(recipe, device, tokens, shape=shape)
    util = a.utilisation if device.kind == "cuda" else a.cpu_utilisation
    peak = device.peak_tflops.get(setup.precision) or device.peak_tflops["fp32"]
    seconds = seconds_per_micro_batch(shape, average, peak, util, a) * recipe.training.gradient_accumulation
    # As the run's summary measures it (on CUDA without the driver's context: a 135M model's allocated peak
    # of 540 MB once read as 0.51 x a prediction that included 512 MB of context, 2026-12-04, H200).
    return {"seconds_per_step": seconds, "peak_memory_mb": memory(shape, setup, a).measured_gb * 1024,
            "precision": setup.precision, "checkpointing": setup.checkpointing}


def _runs_path() -> Path:
    """Where the runs' calibration records live ($FINETUNE_HOME/runs_calibration.json)."""
    from finetune.paths import finetune_home

    return finetune_home() / RUNS_FILE


def _read_runs() -> list[dict[str, Any]]:
    """The stored run records (none when the file is missing or unreadable)."""
    try:
        records = json.loads(_runs_path().read_text())
    except (OSError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


# Runs whose steps held more than this ratio of tokens apart are different kinds: a step's fixed costs (the
# optimizer, launching its kernels) weigh far more in a small step, so a 1-row smoke test's factor read the demo
# recipe's 11 minutes as 18 (2026-12-05) and, stored as "the same kind", replaced the demo run's record.
WORK_RATIO = 2.0


def _work(record: dict[str, Any]) -> float | None:
    """Non-padding tokens per optimizer step a stored run achieved (None in records that lack it)."""
    value = (record.get("measured") or {}).get("tokens_per_step")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _same_kind(record: dict[str, Any], other: dict[str, Any]) -> bool:
    """Two records of the same machine, model, precision, quantisation, checkpointing, sequence length,
    compilation (records from before compiled runs were kept have no "compile": eager) and about the same
    tokens per step (within WORK_RATIO)."""
    keys = ("key", "model", "precision", "quantization", "gradient_checkpointing", "max_length")
    if not (all(record.get(k) == other.get(k) for k in keys) and _compiled(record) == _compiled(other)):
        return False
    work, other_work = _work(record), _work(other)
    return work is None or other_work is None or max(work, other_work) / min(work, other_work) <= WORK_RATIO


def _compiled(record: dict[str, Any]) -> bool:
    """Whether a stored run trained with training.compile."""
    return bool(record.get("compile", False))


def first_step_extra(metrics: list[dict[str, Any]], seconds_per_step: float) -> float | None:
    """How much longer the first optimizer step took than the steady ones (compiling, warm-up), in seconds."""
    first = next((r for r in metrics if r.get("loss") is not None and r.get("seconds_per_step") is not None), None)
    if first is None or first.get("step") != 1:
        return None
    return max(0.0, float(first["seconds_per_step"]) - seconds_per_step)


def record_run(summary: dict[str, Any], recipe: Recipe, run_dir: Path) -> dict[str, Any] | None:
    """Store a finished run's achieved speed and peak memory on this machine, beside what the plan predicted.

    Kept per machine, model, precision, quantisation, checkpointing, sequence length and tokens per step (the
    newest of each kind, `_same_kind`) in $FINETUNE_HOME/runs_calibration.json; the next estimate here for the
    same model scales this machine's time and memory by the measured / predicted ratios of the closest one
    (`learned_from_run`).
    A run with training.compile is its own kind (its steps run faster and hold less) and also keeps how much
    longer its first step took (the compiling), which estimates of compiled runs add once. Completed and
    budget-stopped single-process runs only; returns the record, or None when none was kept.
    """
    try:
        return _record_run(summary, recipe, run_dir)
    except Exception:  # learning from a run must never cost the finished run its result
        return None


def _record_run(summary: dict[str, Any], recipe: Recipe, run_dir: Path) -> dict[str, Any] | None:
    """record_run's work (see there)."""
    from finetune import atomic
    from finetune import catalog as cat
    from finetune.errors import FinetuneError
    from finetune.estimate.assumptions import assumptions
    from finetune.estimate.devices import this_machine
    from finetune.estimate.shape import model_shape
    from finetune.estimate.tokens import count_tokens

    if summary.get("status") not in ("completed", "time_budget") or summary.get("num_processes", 1) != 1:
        return None
    metrics = atomic.read_jsonl(run_dir / "metrics.jsonl")
    achieved = achieved_speed(metrics)
    peak_mb = summary.get("peak_memory_mb") or 0
    if achieved is None or peak_mb <= 0:
        return None
    try:
        a = assumptions()
        shape = model_shape(recipe.base_model, None, recipe.trust_remote_code)
        device = this_machine(cat.load_gpus(), a)
        predicted = predicted_run_step(recipe, shape, device, count_tokens(recipe, None, a), a)
    except FinetuneError:
        return None  # a model or dataset the estimate cannot read: nothing to learn, and the run stands
    if predicted["precision"] != summary.get("precision") or device.kind != summary["hardware"]["device"]:
        return None  # the plan would not describe this run
    record = {
        "key": machine_key(), "model": shape.name, "precision": summary["precision"],
        "quantization": summary.get("quantization"), "gradient_checkpointing": summary["gradient_checkpointing"],
        "max_length": recipe.dataset.max_length, "batch_size": recipe.training.batch_size,
        "lora_r": recipe.lora.r, "recipe": recipe.name, "run": str(run_dir),
        "measured_at": summary.get("finished_at"),
        "measured": {"seconds_per_step": _sig(achieved["seconds_per_step"]),
                     "tokens_per_step": round(achieved["tokens_per_step"], 1), "peak_memory_mb": peak_mb},
        "predicted": {"seconds_per_step": _sig(predicted["seconds_per_step"]),
                      "peak_memory_mb": round(predicted["peak_memory_mb"], 1)},
        "speed_factor": round(speed_factor(predicted["seconds_per_step"], achieved["seconds_per_step"]), 4),
        "memory_factor": round(peak_mb / predicted["peak_memory_mb"], 4),
        "compile": recipe.training.compile,
    }
    if recipe.training.compile:
        extra = first_step_extra(metrics, achieved["seconds_per_step"])
        record["first_step_extra_s"] = None if extra is None else round(extra, 1)
    kept = [r for r in _read_runs() if not _same_kind(r, record)][-(MAX_RUN_RECORDS - 1):]
    try:
        atomic.write_json(_runs_path(), [*kept, record])
    except OSError:
        return None  # a read-only cache costs later estimates their calibration, not this run its result
    return record


def learned_from_run(model: str, precision: str, bits: int | None, checkpointing: bool,
                     seq: int, compiled: bool = False, tokens_per_step: float | None = None) -> dict[str, Any] | None:
    """The stored run on this machine to calibrate a setup by: same model, precision, quantisation and
    checkpointing, the nearest in sequence length and tokens per step (`_nearest`; newest on a tie); None when
    no run here matches.

    An eager setup never learns from a compiled run. A compiled setup learns its speed and its compiling time
    from the nearest compiled run, else from an eager run (slower steps, no compiling: the time reads short by
    the compiling). Its memory factor is the larger of the nearest compiled and eager runs' factors: a compiled
    run's peak depends on how many shapes were compiled, which the memory model does not describe (one compiled
    run's factor, carried to another recipe, read 20% low where the eager run's read 1% low; docs/estimate.md).
    """
    key = machine_key()
    usable = [r for r in _read_runs() if r.get("key") == key and r.get("model") == model
              and r.get("precision") == precision and r.get("quantization") == bits
              and r.get("gradient_checkpointing") == checkpointing
              and isinstance(r.get("speed_factor"), (int, float)) and r["speed_factor"] > 0
              and isinstance(r.get("memory_factor"), (int, float)) and r["memory_factor"] > 0
              and isinstance(r.get("max_length"), int) and r["max_length"] > 0]
    eager = _nearest([r for r in usable if not _compiled(r)], seq, tokens_per_step)
    if not compiled:
        return eager
    learned = _nearest([r for r in usable if _compiled(r)], seq, tokens_per_step)
    if learned is None or eager is None:
        return learned or eager
    if eager["memory_factor"] > learned["memory_factor"]:
        return {**learned, "memory_factor": eager["memory_factor"], "memory_from": eager["run"]}
    return learned


def _nearest(records: list[dict[str, Any]], seq: int, tokens_per_step: float | None = None) -> dict[str, Any] | None:
    """The record nearest a setup, marked as a run's: by the ratios of max_length and of tokens per step
    (the setup's `tokens_per_step` against the run's achieved, where both are known), the newest on a tie."""
    if not records:
        return None

    def distance(record: dict[str, Any]) -> float:
        apart = abs(math.log(record["max_length"] / max(seq, 1)))
        work = _work(record)
        if work and tokens_per_step and tokens_per_step > 0:
            apart += abs(math.log(work / tokens_per_step))
        return apart

    ordered = sorted(enumerate(records), key=lambda p: (distance(p[1]), -p[0]))
    return {**ordered[0][1], "source": "run"}
