"""Time of one step: training FLOPs per token, per-step overhead, seconds per micro-batch."""

from __future__ import annotations

from finetune.estimate.assumptions import Assumptions, assumptions
from finetune.estimate.memory import Setup, lora_input_elements, lora_params
from finetune.estimate.shape import ModelShape


def flops_per_token(shape: ModelShape, setup: Setup) -> float:
    """Training FLOPs per token: 4N through frozen weights (+2N recompute), attention, LoRA's 6 per weight."""
    # The head multiplies even when tied, but only at the positions whose logits are computed.
    matmul = shape.layer_linear_params + shape.vocab * shape.hidden * setup.logits_fraction
    ckpt = 1 if setup.checkpointing else 0
    # Frozen weights: forward 2N, backward only the input gradients 2N (no weight gradients).
    base = (4 + 2 * ckpt) * matmul
    # Attention scores and weighted sum: 4 s d per layer forward; backward twice that.
    attention = (3 + ckpt) * 4 * setup.seq * shape.q_dim * shape.layers
    n_lora = lora_params(shape, setup.lora_r, setup.target_modules)
    return base + attention + (6 + 2 * ckpt) * n_lora


def step_overhead_seconds(shape: ModelShape, setup: Setup, peak_tflops: float,
                          a: Assumptions | None = None) -> float:
    """Time a step spends whatever its tokens: launching kernels (GPU) or dispatching ops (CPU), per layer.

    On a CPU it is counted in matmul-equivalent FLOPs at the same peak as the compute, so that a busy
    machine, which slows both alike, keeps the ratio between two configurations' step times.
    """
    a = a or assumptions()
    if setup.device == "cuda":
        return shape.layers * a.step_overhead_s_per_layer
    return shape.layers * a.cpu_step_overhead_gflop_per_layer / (peak_tflops * 1000)


def seconds_per_micro_batch(shape: ModelShape, setup: Setup, peak_tflops: float, utilisation: float,
                            a: Assumptions | None = None) -> float:
    """Predicted time of one forward+backward over `batch x seq` tokens on one device."""
    a = a or assumptions()
    table = a.quantised_slowdown if setup.device == "cuda" else a.cpu_quantised_slowdown
    slowdown = float(table.get(setup.bits, 1.0)) if setup.bits else 1.0
    tokens = setup.batch * setup.seq
    compute = tokens * flops_per_token(shape, setup) / (peak_tflops * 1e12 * utilisation) * slowdown
    return compute + dropout_seconds(shape, setup, tokens, a) + step_overhead_seconds(shape, setup, peak_tflops, a)


def dropout_seconds(shape: ModelShape, setup: Setup, tokens: int, a: Assumptions | None = None) -> float:
    """Drawing LoRA dropout's masks on a CPU (finetune.cpu_dropout): a time per element of LoRA's inputs.

    Random bits come from a scalar generator, not the matmul units, so the time is per element, not in FLOPs;
    a GPU draws them in the same kernel as the multiply and is not charged.
    """
    a = a or assumptions()
    if setup.device != "cpu" or setup.lora_dropout <= 0:
        return 0.0
    return tokens * lora_input_elements(shape, setup.target_modules) * a.cpu_dropout_ns_per_element * 1e-9
