"""The planner: will a recipe fit on a GPU, how long will it take, what will it cost (no weights are loaded).

Memory, time and cost are pure functions of a `ModelShape` (shape.py: counted from the model's config on the
meta device), a `Setup` (memory.py: the recipe's training choices on one device) and the assumptions in
catalog/estimate_assumptions.yaml (assumptions.py); tokens.py counts the dataset, devices.py describes the
targets, speed.py times a step, calibration.py keeps what this machine measured, plan.py ties them to a
recipe and the catalogues, cli.py prints the answer. docs/estimate.md states every formula.
"""

from finetune.estimate.assumptions import assumptions
from finetune.estimate.calibration import (
    SPEED_FILE,
    calibrate_utilisation,
    compare_probe,
    machine_key,
    predicted_step,
    remember_speed,
    remembered_speed,
    speed_factor,
)
from finetune.estimate.devices import (
    EVAL_CLIMB,
    Device,
    climb_share,
    device_for_gpu,
    packed_layouts,
    peak_after,
    run_setups,
    setup_for,
    this_machine,
)
from finetune.estimate.memory import (
    GIB,
    STRATEGIES,
    Memory,
    Setup,
    activation_bytes_per_token_layer,
    activations,
    changed,
    fits,
    largest_fitting,
    lora_params,
    max_batch_size,
    max_seq_len,
    memory,
    suggestions,
    weights_bytes,
)
from finetune.estimate.plan import (
    Estimate,
    GpuRow,
    check_options,
    checkpointing_here,
    counted,
    estimate,
    estimate_for_training,
    hosted_rows,
    hours_text,
)
from finetune.estimate.shape import ModelShape, config_from_catalogue, model_shape, shape_from_config
from finetune.estimate.speed import dropout_seconds, flops_per_token, seconds_per_micro_batch, step_overhead_seconds
from finetune.estimate.tokens import Tokens, count_tokens, logits_fractions, padded_tokens

__all__ = [
    "EVAL_CLIMB", "GIB", "SPEED_FILE", "STRATEGIES", "Device", "Estimate", "GpuRow", "Memory", "ModelShape", "Setup",
    "Tokens",
    "activation_bytes_per_token_layer", "activations", "assumptions", "calibrate_utilisation", "check_options",
    "changed", "checkpointing_here", "climb_share", "compare_probe", "counted", "dropout_seconds",
    "config_from_catalogue", "count_tokens", "device_for_gpu", "estimate", "estimate_for_training", "fits",
    "flops_per_token", "hosted_rows", "hours_text", "largest_fitting", "logits_fractions", "lora_params",
    "machine_key", "max_batch_size", "max_seq_len", "memory", "model_shape", "packed_layouts", "padded_tokens",
    "peak_after", "predicted_step", "remember_speed", "remembered_speed", "run_setups", "seconds_per_micro_batch",
    "setup_for", "shape_from_config", "speed_factor", "step_overhead_seconds", "suggestions", "this_machine",
    "weights_bytes",
]
