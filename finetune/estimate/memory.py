"""Peak memory of one training step on one device, by component, and what to change when it does not fit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from finetune.estimate.assumptions import Assumptions, assumptions
from finetune.estimate.shape import ModelShape

GIB = 2**30
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")


@dataclass(frozen=True)
class Setup:
    """The training choices that decide memory and speed, resolved for one device."""

    bits: int | None = 4
    double_quant: bool = True
    precision: str = "bf16"  # compute precision: fp32, bf16 or fp16
    device: str = "cuda"  # cuda or cpu
    lora_r: int = 16
    lora_dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    batch: int = 8
    seq: int = 512
    checkpointing: bool = True
    num_gpus: int = 1
    strategy: str = "ddp"
    # Share of positions whose logits are computed: finetune.train asks the model for logits only where
    # some row of the batch has a label (assistant tokens), not over prompts and padding.
    logits_fraction: float = 1.0
    # Multiple of cpu_run_climb a whole CPU run climbs above its first steps' peak: by the number of batch
    # shapes it meets, and once more if it trains on after an evaluation (run_setups); a probe or a GPU: 0.
    climb: float = 0.0

    @property
    def compute_bytes(self) -> int:
        """Bytes per element of the compute dtype."""
        return 4 if self.precision == "fp32" else 2


@dataclass(frozen=True)
class Memory:
    """Peak memory of one training step on one device, in GiB, by component."""

    weights_gb: float
    lora_gb: float
    optimizer_gb: float  # LoRA gradients + AdamW moments
    activations_gb: float  # saved for backward, as configured (checkpointing on or off)
    logits_gb: float
    overhead_gb: float  # CUDA context or process baseline, allocator margin, transient buffers
    activations_checkpointing_gb: float
    activations_no_checkpointing_gb: float
    loading_peak_gb: float = 0.0  # CPU: the process's peak while loading (and quantising) the weights
    # The part of the peak a run's `peak_memory_mb` does not see. CUDA: the driver's context and the caching
    # allocator's margin, both outside torch's max_memory_allocated; a CPU's peak RSS sees everything.
    unmeasured_gb: float = 0.0

    @property
    def training_gb(self) -> float:
        """The sum of the components: the peak of a training step."""
        return (self.weights_gb + self.lora_gb + self.optimizer_gb + self.activations_gb + self.logits_gb
                + self.overhead_gb)

    @property
    def total_gb(self) -> float:
        """The predicted peak: a training step's, or loading's when that is higher (CPU quantisation)."""
        return max(self.training_gb, self.loading_peak_gb)

    @property
    def measured_gb(self) -> float:
        """The predicted peak as a run measures it (`peak_memory_mb`): what a run's record is compared with."""
        return self.total_gb - self.unmeasured_gb

    def scaled_gb(self, memory_factor: float) -> float:
        """The predicted peak after a run here measured `memory_factor` x its own measured part."""
        return self.total_gb + (memory_factor - 1.0) * self.measured_gb

    def to_dict(self) -> dict[str, float]:
        """JSON view (rounded to MiB)."""
        data = {k: round(v, 3) for k, v in asdict(self).items()}
        data["training_gb"] = round(self.training_gb, 3)
        data["total_gb"] = round(self.total_gb, 3)
        return data


Targets = str | tuple[str, ...] | list[str]


def _targets(shape: ModelShape, target_modules: Targets) -> list[tuple[str, int, int]]:
    """The linear modules of one layer that LoRA adapts (peft's 'all-linear' = every one but the head)."""
    if target_modules == "all-linear":
        return list(shape.lora_modules)
    wanted = set(target_modules)
    return [m for m in shape.lora_modules if m[0] in wanted or m[0].rsplit(".", 1)[-1] in wanted]


def lora_input_elements(shape: ModelShape, target_modules: Targets = "all-linear") -> int:
    """Elements of LoRA's inputs per token over the whole model (what dropout draws a mask for)."""
    return shape.layers * sum(i for _, i, _ in _targets(shape, target_modules))


def lora_params(shape: ModelShape, r: int, target_modules: Targets = "all-linear") -> int:
    """Trainable LoRA weights: r x (in + out) for each adapted linear, in every layer."""
    return shape.layers * sum(r * (i + o) for _, i, o in _targets(shape, target_modules))


def weights_bytes(shape: ModelShape, setup: Setup, a: Assumptions) -> float:
    """Bytes of the frozen base weights as stored for training."""
    unquantised = shape.embedding_params + shape.head_params + shape.other_params
    if setup.bits is None:
        # finetune.models loads frozen weights in the compute precision (bf16 on a CPU too).
        return shape.params * setup.compute_bytes
    # Non-quantised parts take the configured kbit upcast (or fp32 if asked); on a CPU in bf16
    # finetune.train.keep_frozen_weights_in_bf16 casts them back to bf16.
    other = max(a.kbit_unquantized_bytes, setup.compute_bytes)
    if _cpu_bf16(setup):
        other = 2
    if setup.bits == 4:
        block = a.nf4_block_size
        if setup.double_quant:
            constants = 1 / block + 4 / (block * a.double_quant_block_size)
        else:
            constants = 4 / block
        return shape.layer_linear_params * (0.5 + constants) + unquantised * other
    return shape.layer_linear_params + 4 * shape.layer_linear_out + unquantised * other


def _cpu_bf16(setup: Setup) -> bool:
    """A CPU run in bf16: every frozen weight in bf16 and LoRA inputs left in bf16 (finetune.train)."""
    return setup.device == "cpu" and setup.precision == "bf16"


def _fp32_storage(setup: Setup, a: Assumptions) -> tuple[bool, bool]:
    """(layer linears stored in fp32, embeddings/head stored in fp32) for this setup."""
    if setup.precision == "fp32":
        return setup.bits is None, True
    if setup.bits is None or _cpu_bf16(setup):
        return False, False
    return False, a.kbit_unquantized_bytes >= 4


def _activation_mode(setup: Setup, a: Assumptions) -> str:
    """Which row of activation_coefficients applies."""
    if setup.precision == "fp32":
        mode = "fp32"
    elif _cpu_bf16(setup):
        mode = "cpu_bf16"
    elif setup.bits is not None and a.kbit_unquantized_bytes >= 4:
        mode = "kbit"
    else:
        mode = "autocast" if a.autocast_16bit else "pure16"
    return mode + ("_dropout" if setup.lora_dropout > 0 else "")


def activation_bytes_per_token_layer(shape: ModelShape, setup: Setup, a: Assumptions) -> float:
    """Bytes a decoder layer saves for backward per token (Korthikanti-style term, measured coefficients)."""
    c = a.activation_coefficients.row(_activation_mode(setup, a))
    b = setup.compute_bytes
    mlp_share = 1.0 if shape.gated_mlp else 0.5  # fc -> act -> proj keeps half the tensors of gate/up/act/mul
    per = c.c_h * shape.hidden + c.c_q * shape.q_dim + c.c_i * shape.intermediate * mlp_share
    per += setup.lora_r * len(_targets(shape, setup.target_modules)) * b  # LoRA A outputs, kept for B's grad
    per += setup.seq * b  # the additive padding mask, copied per layer
    if shape.eager_attention:
        per += 2 * shape.heads * setup.seq * b  # scores and probabilities (s x s per head)
    elif _math_attention(setup):
        per += 4 * shape.heads * setup.seq * b  # torch's matmul SDPA keeps four s x s tensors per head (measured)
    return per


def _math_attention(setup: Setup) -> bool:
    """Whether training picks torch's matmul attention for this setup (finetune.hardware's kernel policy)."""
    from finetune.hardware import math_attention

    return math_attention(_cpu_bf16(setup), setup.seq, setup.checkpointing)


def activations(shape: ModelShape, setup: Setup, a: Assumptions, checkpointing: bool) -> float:
    """Bytes saved for backward over the whole model for one micro-batch (with or without checkpointing)."""
    tokens = setup.batch * setup.seq
    layer = activation_bytes_per_token_layer(shape, setup, a) * tokens
    layers_fp32, head_fp32 = _fp32_storage(setup, a)
    autocast = setup.precision != "fp32"
    # Autocast saves a 16-bit copy of every fp32-stored frozen weight it multiplies with (measured).
    layer_copies = 2 * shape.layer_linear_params if (autocast and layers_fp32) else 0
    head_copy = 2 * shape.vocab * shape.hidden if (autocast and head_fp32) else 0
    if _cpu_bf16(setup):  # autocast's bf16 copies of the fp32 LoRA weights, kept for backward (measured)
        layer_copies += 2 * lora_params(shape, setup.lora_r, setup.target_modules)
    if not checkpointing:
        return layer * shape.layers + layer_copies + head_copy
    residual = 4 if head_fp32 else setup.compute_bytes
    # Each layer's input is kept; backward recomputes one layer at a time; the final norm keeps fp32.
    kept = tokens * shape.hidden * (shape.layers * residual + 4)
    return kept + layer + layer_copies / shape.layers + head_copy


def memory(shape: ModelShape, setup: Setup, a: Assumptions | None = None) -> Memory:
    """Peak memory per device for one training step (the sum of the parts at the start of backward)."""
    a = a or assumptions()
    n = setup.num_gpus
    weights = loaded = weights_bytes(shape, setup, a)
    n_lora = lora_params(shape, setup.lora_r, setup.target_modules)
    lora = n_lora * a.lora_param_bytes
    optimizer = n_lora * (a.lora_param_bytes + a.adam_state_bytes)  # gradients + two moments
    act_ckpt = activations(shape, setup, a, checkpointing=True)
    act_full = activations(shape, setup, a, checkpointing=False)
    acts = act_ckpt if setup.checkpointing else act_full
    # The head's output (16-bit under autocast, whatever its weight's dtype), which the loss's gradient
    # overwrites, plus the loss's one chunk in fp32 (finetune/loss.py).
    positions = setup.batch * setup.seq * setup.logits_fraction
    logits = positions * shape.vocab * setup.compute_bytes + a.loss_chunk_mb * 2**20
    if n > 1 and setup.strategy != "ddp":
        # ZeRO-2 shards gradients and optimizer state; FSDP / ZeRO-3 shard the weights too, and gather
        # one layer's full weights at a time (plus one prefetched).
        optimizer /= n
        if setup.strategy in ("fsdp", "zero3"):
            gather = 2 * weights / max(shape.layers, 1)
            weights = weights / n + gather
            lora /= n
    if setup.device == "cuda":
        base = a.cuda_context_gb * GIB
        if setup.bits is not None:
            base += shape.largest_linear * setup.compute_bytes  # the dequantised weight of the current matmul
    else:
        base = a.cpu_process_baseline_gb * GIB
    unmeasured = 0.0
    if setup.device == "cuda":
        margin = a.allocator_margin * (acts + logits)
        overhead = base + margin
        unmeasured = a.cuda_context_gb * GIB + margin  # outside torch's max_memory_allocated
    else:
        # On a CPU the margin grows with the step's tensors but not with LoRA dropout's (its masks and dropped
        # inputs added 0.95-1.07x their counted bytes to measured peaks, 2026-12-03), and a whole run climbs.
        plain = activations(shape, replace(setup, lora_dropout=0.0), a, setup.checkpointing) + logits
        overhead = base + (a.cpu_allocator_margin + setup.climb * a.cpu_run_climb) * plain
    loading = 0.0
    if setup.device == "cpu" and (setup.bits is not None or shape.checkpoint_bytes != setup.compute_bytes):
        # Quantising on a CPU, or converting the checkpoint's dtype (the bundled fp32 file loaded in bf16),
        # reads the whole checkpoint (memory-mapped: its pages count as resident until loading ends) beside
        # the weights it builds; each weight's 16-bit copy is given back once quantised (finetune/allocator.py).
        # The bundled model: 1,189-1,208 MB measured quantising, 1,216 MB converting to bf16 (818 MB over
        # the process before loading, 810 MB predicted). A checkpoint already in the compute dtype stays mapped
        # and is only read as training touches it, so it has no such peak.
        loading = base + shape.params * shape.checkpoint_bytes + loaded
    return Memory(
        weights_gb=weights / GIB,
        lora_gb=lora / GIB,
        optimizer_gb=optimizer / GIB,
        activations_gb=acts / GIB,
        logits_gb=logits / GIB,
        overhead_gb=overhead / GIB,
        activations_checkpointing_gb=act_ckpt / GIB,
        activations_no_checkpointing_gb=act_full / GIB,
        loading_peak_gb=loading / GIB,
        unmeasured_gb=unmeasured / GIB,
    )


def fits(mem: Memory, capacity_gb: float) -> bool:
    """Whether a predicted peak fits in `capacity_gb` of usable memory."""
    return mem.total_gb <= capacity_gb


def max_batch_size(
    shape: ModelShape, setup: Setup, capacity_gb: float, a: Assumptions, limit: int = 4096
) -> int:
    """The largest micro-batch that fits at the setup's sequence length (0 if even one row does not)."""
    return largest_fitting(lambda n: fits(memory(shape, replace(setup, batch=n), a), capacity_gb), 1, limit)


def max_seq_len(shape: ModelShape, setup: Setup, capacity_gb: float, a: Assumptions) -> int:
    """The longest sequence that fits at the setup's batch size (0 if not even 16 tokens do)."""
    if not fits(memory(shape, replace(setup, seq=16), a), capacity_gb):
        return 0
    lo, hi = 16, max(16, shape.max_position)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(memory(shape, replace(setup, seq=mid), a), capacity_gb):
            lo = mid
        else:
            hi = mid - 1
    return lo


def largest_fitting(fits_at: Callable[[int], bool], guess: int, limit: int) -> int:
    """The largest n in 1..limit for which fits_at(n) holds (it holds up to some n, then not), 0 if not even 1.

    Searched out from `guess` in doubling steps, then halved: a guess near the answer costs a few calls, which
    matters where each call lays out a packed epoch. The answer is always one that fits_at accepted.
    """
    lo, hi = 0, max(1, limit)  # lo fits (or is 0); nothing above hi is tried
    start = min(max(guess, 1), hi)
    step = 1
    if fits_at(start):
        lo = start
        while lo < hi:
            probe = min(lo + step, hi)
            if not fits_at(probe):
                hi = probe - 1
                break
            lo, step = probe, step * 2
    else:
        hi = start - 1
        while hi > lo:
            probe = max(hi - step + 1, lo + 1)
            if fits_at(probe):
                lo = probe
                break
            hi, step = probe - 1, step * 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits_at(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


# What a suggestion may change, as `peak_at` takes it, and the Setup field a bare setup changes for it.
_CHANGES = {"batch_size": "batch", "max_length": "seq", "bits": "bits", "checkpointing": "checkpointing",
            "lora_r": "lora_r", "num_gpus": "num_gpus", "strategy": "strategy"}


def changed(setup: Setup) -> Callable[..., Setup]:
    """`peak_at` for a bare setup (unpacked): the same step with batch_size rows, cut to max_length, etc."""

    def peak_at(**changes: Any) -> Setup:
        if "max_length" in changes:
            changes["max_length"] = min(changes["max_length"], setup.seq)  # a longer limit cuts no row
        return replace(setup, **{_CHANGES[k]: v for k, v in changes.items()})

    return peak_at


def suggestions(shape: ModelShape, setup: Setup, capacity_gb: float, grad_accum: int, a: Assumptions, *,
                batch_size: int | None = None, peak_at: Callable[..., Setup] | None = None,
                memory_gb: float | None = None) -> list[str]:
    """Concrete recipe changes that make a setup fit, least invasive first, each with its predicted peak.

    `setup` is the run's largest step. `batch_size` is the recipe's training.batch_size (default `setup.batch`:
    a packed run's largest step has another number of lines). `peak_at(**changes)` is the largest step training
    would run after changing batch_size, max_length, bits, checkpointing, lora_r, num_gpus or strategy
    (default `changed(setup)`; plan.py passes one that lays out a packed recipe's batches again), so that each
    figure is for the change suggested. Every batch suggestion keeps the recipe's effective batch (batch_size x
    gradient_accumulation) exactly. `memory_gb`: the device's memory (a GPU's, or the RAM a CPU has
    available), for the figures' scale and the last resort's "needs N GB"; default: capacity_gb's.
    """
    rows = batch_size or setup.batch
    peak_at = peak_at or changed(setup)
    share = a.usable_memory_fraction if setup.device == "cuda" else a.cpu_usable_memory_fraction
    usable = memory_gb * share if memory_gb else capacity_gb
    # A run here that measured more than predicted shrank `capacity_gb`: figures are shown grown alike, as the
    # row's own peak is, so that each reads against the device's usable memory.
    scale = usable / capacity_gb if capacity_gb > 0 else 1.0
    out: list[str] = []

    def note(change: str, candidate: Setup) -> bool:
        """Record `change` if `candidate` fits; say whether it did."""
        total = memory(shape, candidate, a).total_gb
        if total <= capacity_gb:
            out.append(f"{change}: {total * scale:.1f} GB")
            return True
        return False

    effective = rows * grad_accum
    # Fewer rows a step and more steps per update: only a batch_size that divides the effective batch keeps it.
    for batch in sorted((n for n in range(1, rows) if effective % n == 0), reverse=True):
        if note(f"training.batch_size={batch} training.gradient_accumulation={effective // batch} "
                f"(same effective batch {effective})", peak_at(batch_size=batch)):
            break
    if not setup.checkpointing:
        note("training.gradient_checkpointing=true", peak_at(checkpointing=True))
    if setup.bits != 4:
        note("quantization.bits=4 (QLoRA)", peak_at(bits=4))
    # The longest max_length at which batch_size rows all that long fit: no batch, packed or not, holds more.
    seq = max_seq_len(shape, replace(setup, batch=rows), capacity_gb, a)
    if 0 < seq < setup.seq:
        note(f"dataset.max_length={seq}", peak_at(max_length=seq))
    if setup.lora_r > 8:
        note(f"lora.r={setup.lora_r // 2}", peak_at(lora_r=setup.lora_r // 2))
    if out:
        return out
    # Nothing alone is enough: try everything at once, then say how much memory it needs.
    lean_changes = {"bits": 4, "checkpointing": True, "batch_size": 1}
    lean = peak_at(**lean_changes)
    all_of = (f"all of: quantization.bits=4, training.gradient_checkpointing=true, training.batch_size=1 "
              f"training.gradient_accumulation={effective}")
    if note(all_of, lean):
        return out
    seq = max_seq_len(shape, lean, capacity_gb, a)
    if 16 <= seq < lean.seq and note(f"{all_of}, dataset.max_length={seq}", peak_at(**lean_changes, max_length=seq)):
        return out
    if setup.device == "cuda":  # a CPU trains in one process: there is no second one to shard over
        for n in (2, 4, 8):
            if note(f"--gpus {n} --strategy fsdp with 4-bit, checkpointing and batch_size=1",
                    peak_at(**lean_changes, num_gpus=n, strategy="fsdp")):
                return out
    need = memory(shape, lean, a).total_gb * scale / share
    if setup.device == "cpu":
        out.append(f"needs about {need:.0f} GB of memory even at 4-bit, batch 1; this machine has "
                   f"{usable / share:.0f} GB available")
    else:
        out.append(f"needs a GPU with at least {need:.0f} GB even at 4-bit, batch 1")
    return out
