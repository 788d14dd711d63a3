"""Estimation targets (a catalogue GPU or this machine) and a recipe's setups on one of them."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from finetune import catalog as cat
from finetune.estimate.assumptions import Assumptions, assumptions
from finetune.estimate.memory import GIB, Setup, memory
from finetune.estimate.tokens import Tokens, batch_widths, logits_fractions, padded_tokens

if TYPE_CHECKING:
    from finetune.estimate.shape import ModelShape
    from finetune.recipe import Recipe

# Rows whose packed layout is worked out; a larger dataset's first ones stand for it (the layout is per group of
# batches, so its largest batch is found within a few thousand rows).
PACKED_LAYOUT_ROWS = 20_000


@dataclass
class Device:
    """A target to estimate for: a catalogue GPU or this machine."""

    name: str
    kind: str  # cuda or cpu
    memory_gb: float  # nominal memory (GPU) or available RAM (CPU)
    capacity_gb: float  # what a run may use
    peak_tflops: dict[str, float]
    power_w: float | None
    gpu: cat.GPU | None = None
    this_machine: bool = False
    best_precision: str = "bf16"


def device_for_gpu(gpu: cat.GPU, a: Assumptions) -> Device:
    """A catalogue GPU as an estimation target."""
    return Device(
        name=gpu.name, kind="cuda", memory_gb=gpu.memory_gb,
        capacity_gb=gpu.memory_gb * a.usable_memory_fraction,
        peak_tflops={p: gpu.tflops(p) for p in ("fp32", "bf16", "fp16")},
        power_w=gpu.power_w, gpu=gpu, best_precision=gpu.best_precision(),
    )


def this_machine(gpus: list[cat.GPU], a: Assumptions) -> Device:
    """The machine we run on: its CUDA GPU (catalogue speeds where known) or its CPU (measured matmuls)."""
    from finetune.hardware import choose_precision, detect

    hw = detect()
    if hw.device == "cuda":
        known = cat.match_device_name(hw.name, gpus, hw.memory_gb)  # None for a card the catalogue lacks
        peak = {p: known.tflops(p) for p in ("fp32", "bf16", "fp16")} if known else {}
        if not peak:
            peak = {"fp32": 20.0, "bf16": 80.0, "fp16": 80.0}  # an unknown card: a mid-range guess
        return Device(
            name=f"this machine ({hw.name})", kind="cuda", memory_gb=hw.memory_gb,
            capacity_gb=hw.memory_gb * a.usable_memory_fraction, peak_tflops=peak,
            power_w=known.power_w if known else None, gpu=known, this_machine=True,
            best_precision=choose_precision("auto", hw),
        )
    try:
        import psutil

        available = psutil.virtual_memory().available / GIB
    except ImportError:
        available = hw.memory_gb
    gflops = _plausible_cpu_gflops(hw.gflops, a)
    fp32, bf16 = gflops["fp32"] / 1000, gflops["bf16"] / 1000
    return Device(
        name=f"this machine (CPU: {hw.name})", kind="cpu", memory_gb=available,
        capacity_gb=available * a.cpu_usable_memory_fraction,
        peak_tflops={"fp32": fp32, "bf16": bf16, "fp16": fp32},
        power_w=a.cpu_power_w, this_machine=True, best_precision=choose_precision("auto", hw),
    )


@lru_cache(maxsize=1)
def _remeasured() -> dict[str, float]:
    """The CPU's matmul speed measured again, once a process: every estimate in it then sees the same machine."""
    from finetune.hardware import measure_matmul_gflops

    return {name: measure_matmul_gflops(name) for name in ("fp32", "bf16")}


def _plausible_cpu_gflops(cached: dict[str, float], a: Assumptions) -> dict[str, float]:
    """The CPU's matmul speed: finetune.hardware's cached figures, re-measured if they look disturbed.

    The cache keeps one short measurement; taken while other processes hammer the CPU it can be 40x
    too low (seen on a shared 2-core machine), which would make every time estimate here wrong.
    """
    floor = (os.cpu_count() or 1) * a.cpu_min_gflops_per_core
    if cached.get("fp32", 0.0) >= floor:
        return {"fp32": cached["fp32"], "bf16": cached.get("bf16", cached["fp32"])}
    fresh = _remeasured()
    return {name: max(fresh[name], cached.get(name, 0.0)) for name in fresh}



def setup_for(recipe: Recipe, device: Device, num_gpus: int = 1, strategy: str = "ddp",
              seq: int | None = None) -> Setup:
    """The recipe's choices resolved for a device (auto precision and checkpointing as in training)."""
    t = recipe.training
    precision = device.best_precision if t.precision == "auto" else t.precision
    ckpt = (device.kind == "cuda") if t.gradient_checkpointing == "auto" else bool(t.gradient_checkpointing)
    targets = recipe.lora.target_modules
    return Setup(
        bits=recipe.quantization.bits,
        double_quant=recipe.quantization.double_quant,
        precision=precision,
        device=device.kind,
        lora_r=recipe.lora.r,
        lora_dropout=recipe.lora.dropout,
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        batch=t.batch_size,
        seq=seq or recipe.dataset.max_length,
        checkpointing=ckpt,
        num_gpus=num_gpus if device.kind == "cuda" else 1,
        strategy=strategy,
    )


def packed_layouts(recipe: Recipe, shape: ModelShape, device: Device, tokens: Tokens) -> list[tuple[int, int]]:
    """(lines, width) of each packed batch of the first epoch, as training lays them out; [] when it would not pack.

    The decision and the batches are finetune.packing's own (choose_packing, epoch_batches, lines_of) on the
    counted row lengths; the attention implementation is the one transformers picks (eager where the model
    needs it, sdpa otherwise).
    """
    t = recipe.training
    attention = "eager" if shape.eager_attention else "sdpa"
    return list(_packed_layouts(t.packing, shape.architecture, attention, device.kind,
                                tuple(tokens.lengths[:PACKED_LAYOUT_ROWS]), recipe.dataset.max_length,
                                t.batch_size, t.seed))


# Several entries: a row's limits and suggestions lay the epoch out again for other batch sizes (plan.py).
@lru_cache(maxsize=64)
def _packed_layouts(packing: bool | str, model_type: str, attention: str, device_kind: str,
                    lengths: tuple[int, ...], max_length: int, batch_size: int,
                    seed: int) -> tuple[tuple[int, int], ...]:
    """packed_layouts' work, once per dataset, device kind and batch size: a plan asks for every GPU row (~1 s at
    20k rows)."""
    from finetune.packing import choose_packing, epoch_batches, lines_of

    if not lengths or not choose_packing(packing, model_type, attention, device_kind, list(lengths), max_length,
                                         batch_size).enabled:
        return ()
    layouts = []
    for batch in epoch_batches(list(lengths), batch_size, seed):
        rows = [lengths[i] for i in batch]
        layouts.append((len(lines_of(rows, max(rows))), max(rows)))
    return tuple(layouts)


# A CPU run's peak climbs as it meets new batch shapes (malloc's freed blocks, oneDNN's kernels and buffers per
# shape); measured 2026-12-03 on the bundled model: 36-39 shapes and 19 shapes climbed alike, 2 shapes (every
# batch but the last cut to max_length) hardly at all. The full climb from this many shapes on (linear below).
CLIMB_SHAPES = 16


# Training that goes on after an evaluation climbs again (the evaluation's no-grad batches leave the heap cut
# differently): the ojousama recipe's 3 epochs read 7,050 MB at the end of epoch 1, 7,392 after the first
# evaluation and 7,514 at the end (2026-12-03, AMX); the EPYC's 3-epoch demo of 2026-12-02 rose 424 MB across
# its first evaluation. One more full climb for a run that evaluates before its last step (fitted to the first).
EVAL_CLIMB = 1.0


def climb_share(shapes: int, evaluates_mid_run: bool = False) -> float:
    """Multiple of cpu_run_climb a whole run makes: by its number of distinct batch shapes, plus EVAL_CLIMB if
    training resumes after an evaluation."""
    return min(1.0, max(0, shapes - 1) / (CLIMB_SHAPES - 1)) + (EVAL_CLIMB if evaluates_mid_run else 0.0)


def _evaluates_mid_run(recipe: Recipe, tokens: Tokens, steps_per_epoch: int) -> bool:
    """Whether training evaluates and goes on: every eval_steps, or at the end of an epoch not the last."""
    t = recipe.training
    if not tokens.eval_lengths:
        return False
    steps = t.max_steps or math.ceil(steps_per_epoch * t.epochs / t.gradient_accumulation)
    every = t.eval_steps or max(1, steps_per_epoch // t.gradient_accumulation)
    return steps > every


def run_setups(recipe: Recipe, device: Device, tokens: Tokens, num_gpus: int = 1,
               strategy: str = "ddp", shape: ModelShape | None = None,
               first_batches: int | None = None, whole_run: bool = True) -> tuple[Setup, Setup]:
    """(peak-memory setup: the largest batch, average-step setup: mean positions per row) for a device.

    Unpacked, the largest batch is batch_size rows of the longest length; packed (given the model's `shape`,
    which decides whether training packs), it is the packed batch with the most positions (lines x width),
    whose logits are kept nearly everywhere (some line has a label at almost every position). Packed batches come
    in a random order, so a probe of a few steps peaks at the largest of its `first_batches`, not the epoch's.
    A `whole_run` on a CPU is predicted with the climb over a run (Setup.climb: by its batch shapes, and its
    evaluations before the last step); a probe (`whole_run=False`) and a GPU are not.
    """
    t = recipe.training
    climbs = whole_run and device.kind == "cpu"  # a GPU's caching allocator has its own margin
    layouts = packed_layouts(recipe, shape, device, tokens) if shape is not None else []
    if layouts:
        seen = layouts[:first_batches] if first_batches else layouts
        lines, width = max(seen, key=lambda layout: layout[0] * layout[1])
        climb = climb_share(len(set(layouts)), _evaluates_mid_run(recipe, tokens, len(layouts))) if climbs else 0.0
        peak = replace(setup_for(recipe, device, num_gpus, strategy, seq=width), batch=lines, climb=climb)
        positions = sum(n * w for n, w in layouts)
        mean_seq = max(1, round(positions / (len(layouts) * t.batch_size)))
        return _without_needless_checkpointing(recipe, device, shape, peak,
                                               replace(peak, batch=t.batch_size, seq=mean_seq))
    longest = max(tokens.lengths, default=recipe.dataset.max_length)
    seq = max(16, min(recipe.dataset.max_length, longest))
    peak_frac, mean_frac = logits_fractions(tokens, t.batch_size, t.group_by_length, t.seed)
    widths = batch_widths(tokens, t.batch_size, t.group_by_length, t.seed)
    climb = climb_share(len(set(widths)), _evaluates_mid_run(recipe, tokens, len(widths))) if climbs else 0.0
    peak = replace(setup_for(recipe, device, num_gpus, strategy, seq=seq), logits_fraction=peak_frac, climb=climb)
    padded, _ = padded_tokens(tokens.lengths, t.batch_size, t.group_by_length, t.seed)
    mean_seq = max(1, round(padded / max(1, len(tokens.lengths)))) if tokens.lengths else seq
    return _without_needless_checkpointing(recipe, device, shape, peak,
                                           replace(peak, seq=mean_seq, logits_fraction=mean_frac))


def _without_needless_checkpointing(recipe: Recipe, device: Device, shape: ModelShape | None, peak: Setup,
                                    average: Setup) -> tuple[Setup, Setup]:
    """`gradient_checkpointing: auto` on CUDA, resolved by memory: off where the largest step fits easily without.

    Checkpointing recomputes every layer's forward in the backward pass (a third more work) to hold less; a run
    whose step without it is predicted at most `cuda_checkpointing_off_share` of the usable GPU memory does not
    need the saving. finetune.train resolves `auto` through here too, so the estimate describes the run.
    """
    if device.kind != "cuda" or recipe.training.gradient_checkpointing != "auto" or shape is None:
        return peak, average
    a = assumptions()
    off = replace(peak, checkpointing=False)
    if memory(shape, off, a).total_gb > a.cuda_checkpointing_off_share * device.capacity_gb:
        return peak, average
    return off, replace(average, checkpointing=False)


def peak_after(recipe: Recipe, device: Device, tokens: Tokens, shape: ModelShape, num_gpus: int = 1,
               strategy: str = "ddp", **changes: Any) -> Setup:
    """The largest step training would run after changing the recipe, as run_setups lays it out.

    `changes`: batch_size, max_length, bits, checkpointing, lora_r (the recipe's keys). A packed
    recipe is laid out again for a new batch size (its largest packed batch is not batch_size rows), a shorter
    max_length cuts the counted rows to it, and `gradient_checkpointing: auto` is resolved for the changed run.
    """
    t, q = recipe.training, recipe.quantization
    training = {k: v for k, v in (("batch_size", changes.get("batch_size")),
                                  ("gradient_checkpointing", changes.get("checkpointing"))) if v is not None}
    update: dict[str, Any] = {"training": t.model_copy(update=training)}
    if "bits" in changes:
        update["quantization"] = q.model_copy(update={"bits": changes["bits"]})
    if "lora_r" in changes:
        update["lora"] = recipe.lora.model_copy(update={"r": changes["lora_r"]})
    if "max_length" in changes:
        cut = changes["max_length"]
        update["dataset"] = recipe.dataset.model_copy(update={"max_length": cut})
        tokens = replace(tokens, lengths=[min(n, cut) for n in tokens.lengths],
                         eval_lengths=[min(n, cut) for n in tokens.eval_lengths],
                         prompt_lengths=[min(n, cut) for n in tokens.prompt_lengths])
    peak, _ = run_setups(recipe.model_copy(update=update), device, tokens, num_gpus, strategy, shape)
    return peak
