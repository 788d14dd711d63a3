"""Measuring this machine: a probe's steps against the prediction, and the speed factor kept per machine."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from finetune.estimate.assumptions import Assumptions
from finetune.estimate.devices import Device, run_setups
from finetune.estimate.memory import memory
from finetune.estimate.shape import ModelShape
from finetune.estimate.speed import seconds_per_micro_batch
from finetune.estimate.tokens import Tokens

if TYPE_CHECKING:
    from finetune.recipe import Recipe


def predicted_step(recipe: Recipe, shape: ModelShape, device: Device, measured: dict[str, Any],
                   tokens: Tokens, utilisation: float, a: Assumptions) -> dict[str, float]:
    """What the model predicts for a probe's steps: seconds per optimizer step and peak memory (MiB).

    The probe reports real (non-padding) tokens per optimizer step; the time prediction spreads them over
    batch x accumulation rows. Its peak memory comes from its first, longest batch (length-grouped
    sampling starts with the longest rows), which is what the memory prediction models.
    """
    t = recipe.training
    rows = t.batch_size * t.gradient_accumulation
    precision = measured.get("precision") or device.best_precision
    checkpointing = bool(measured.get("gradient_checkpointing", False))
    peak_setup, average = run_setups(recipe, device, tokens)
    peak_setup = replace(peak_setup, precision=precision, checkpointing=checkpointing)
    seq = max(1, round(measured["tokens_per_step"] / rows))
    average = replace(average, precision=precision, checkpointing=checkpointing, seq=seq)
    peak = device.peak_tflops.get(precision) or device.peak_tflops["fp32"]
    seconds = seconds_per_micro_batch(shape, average, peak, utilisation, a) * t.gradient_accumulation
    mem = memory(shape, peak_setup, a)
    total = mem.total_gb
    if device.kind == "cuda":
        total -= a.cuda_context_gb  # the probe reports torch's allocated peak, which excludes the context
    return {"seconds_per_step": seconds, "peak_memory_mb": total * 1024, "seq": seq, "peak_seq": peak_setup.seq}


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


def machine_key() -> str:
    """This machine's device and torch version: a measured speed factor holds only where it was measured."""
    import torch

    from finetune.hardware import detect

    hw = detect()
    return f"{hw.device}|{hw.name}|{torch.__version__}"


def remember_speed(factor: float, recipe_name: str) -> dict[str, Any]:
    """Store a probe's speed factor for this machine ($FINETUNE_HOME/speed.json) and return the record.

    Later estimates here, and `finetune train`'s two-line estimate, scale this machine's times by it: an
    uncalibrated CPU estimate can be 2x off (docs/estimate.md), a probed one was within 25%.
    """
    from datetime import datetime

    from finetune import atomic
    from finetune.paths import finetune_home

    record = {"key": machine_key(), "speed_factor": round(factor, 4), "recipe": recipe_name,
              "measured_at": datetime.now().astimezone().isoformat(timespec="seconds")}
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
    return record if isinstance(factor, (int, float)) and factor > 0 else None


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
        "predicted": {"seconds_per_step": round(predicted["seconds_per_step"], 4),
                      "peak_memory_mb": round(predicted["peak_memory_mb"], 1)},
        "memory_error": round(predicted["peak_memory_mb"] / measured["peak_memory_mb"] - 1, 4)
        if measured.get("peak_memory_mb") else None,
        "utilisation_assumed": assumed,
        "speed_factor": round(factor, 4),
        "utilisation_calibrated": round(assumed / factor, 4),
    }
