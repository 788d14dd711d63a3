"""The planner: will a recipe fit on a GPU, how long will it take, what will it cost (no weights are loaded).

Memory, time and cost are pure functions of a `ModelShape` (counted from the model's config on the meta
device), a `Setup` (the recipe's training choices on one device) and the assumptions in
catalog/estimate_assumptions.yaml; `estimate()` ties them to a recipe, its dataset and the catalogues.
docs/estimate.md states every formula and where its figures come from.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune import catalog as cat
from finetune.cost import convert, display_currency, run_cost
from finetune.errors import DataError, FinetuneError, ModelError, RecipeError

if TYPE_CHECKING:
    from finetune.recipe import Recipe

GIB = 2**30
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")


# --- the model's shape ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the estimator needs to know about a model, all counted from its config (never its weights)."""

    name: str
    architecture: str
    params: int  # every parameter, tied embeddings counted once
    layers: int
    hidden: int
    heads: int
    head_dim: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    max_position: int
    gated_mlp: bool  # SwiGLU-style MLP (gate, up, down) rather than fc -> act -> proj
    layer_linear_params: int  # weights of the linear layers inside the decoder layers (what gets quantised)
    layer_linear_out: int  # sum of their output sizes (LLM.int8() keeps one scale per output row)
    largest_linear: int  # the biggest single linear weight (dequantised transiently)
    embedding_params: int
    head_params: int  # the output head when not tied, else 0
    lora_modules: tuple[tuple[str, int, int], ...]  # (name in a layer, in, out) of each linear in one layer
    eager_attention: bool = False  # attention that materialises the s x s scores (e.g. Gemma 2 softcapping)
    checkpoint_bytes: int = 2  # bytes per weight in the checkpoint (16-bit on the hub, fp32 if converted)
    licence: str | None = None
    source: str = "config"  # "catalogue" or "config"

    @property
    def other_params(self) -> int:
        """Norms, biases and anything else that is neither a layer linear nor an embedding or head."""
        return self.params - self.layer_linear_params - self.embedding_params - self.head_params

    @property
    def q_dim(self) -> int:
        """Width of the attention's query projection (heads x head_dim)."""
        return self.heads * self.head_dim


def _config_kwargs(entry: cat.KnownModel) -> dict[str, Any]:
    """transformers config arguments for a catalogue entry (the field names differ by architecture)."""
    h, i, heads = entry.hidden_size, entry.intermediate_size, entry.heads
    if entry.architecture == "gpt2":
        return {"n_embd": h, "n_inner": i, "n_layer": entry.num_layers, "n_head": heads,
                "vocab_size": entry.vocab_size, "n_positions": entry.max_position,
                "tie_word_embeddings": entry.tie_word_embeddings, "bos_token_id": None, "eos_token_id": None}
    common = {"hidden_size": h, "num_hidden_layers": entry.num_layers, "num_attention_heads": heads,
              "vocab_size": entry.vocab_size, "max_position_embeddings": entry.max_position,
              "tie_word_embeddings": entry.tie_word_embeddings}
    if entry.architecture == "gpt_neox_japanese":
        return {**common, "intermediate_multiple_size": max(1, round(i / h))}
    if entry.architecture == "gpt_neox":
        return {**common, "intermediate_size": i}
    kwargs = {**common, "intermediate_size": i, "num_key_value_heads": entry.kv_heads or heads}
    if entry.head_dim:
        kwargs["head_dim"] = entry.head_dim
    return kwargs


def config_from_catalogue(entry: cat.KnownModel) -> Any:
    """A transformers config built from a catalogue entry's essentials."""
    from transformers import CONFIG_MAPPING

    if entry.architecture not in CONFIG_MAPPING:
        raise ModelError(f"architecture '{entry.architecture}' is unknown to this transformers version")
    return CONFIG_MAPPING[entry.architecture](**_config_kwargs(entry))


def shape_from_config(
    config: Any, name: str, source: str = "config", licence: str | None = None
) -> ModelShape:
    """Count a model's parameters and shapes by building it on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{name}: cannot build the model from its config: {first}") from None
    params = sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once
    lists = (m for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    layer_list = max(lists, key=len, default=None)
    if layer_list is None or len(layer_list) == 0:
        raise ModelError(f"{name}: cannot find the decoder layers in {type(model).__name__}")
    modules: list[tuple[str, int, int]] = []
    for mod_name, module in layer_list[0].named_modules():
        if isinstance(module, torch.nn.Linear):
            modules.append((mod_name, module.in_features, module.out_features))
        elif isinstance(module, Conv1D):
            modules.append((mod_name, module.weight.shape[0], module.weight.shape[1]))
    layers = len(layer_list)
    embedding = model.get_input_embeddings().weight.numel()
    head_module = model.get_output_embeddings()
    tied = head_module is None or head_module.weight is model.get_input_embeddings().weight
    head = 0 if tied else head_module.weight.numel()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", None) or text.n_embd)
    heads = int(getattr(text, "num_attention_heads", None) or text.n_head)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    names = {n.rsplit(".", 1)[-1] for n, _, _ in modules}
    gated = bool(names & {"gate_proj", "gate_up_proj", "w1", "w3", "gate"})
    widening = [out for n, _, out in modules if "up" in n or "fc" in n or "h_to_4h" in n]
    intermediate = max(widening, default=4 * hidden)
    if "gate_up_proj" in names:
        intermediate //= 2
    max_position = int(getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", 2048))
    return ModelShape(
        name=name,
        architecture=str(getattr(config, "model_type", type(model).__name__)),
        params=params,
        layers=layers,
        hidden=hidden,
        heads=heads,
        head_dim=head_dim,
        kv_heads=kv_heads,
        intermediate=intermediate,
        vocab=int(model.get_input_embeddings().weight.shape[0]),
        tied=tied,
        max_position=max_position,
        gated_mlp=gated,
        layer_linear_params=layers * sum(i * o for _, i, o in modules),
        layer_linear_out=layers * sum(o for _, _, o in modules),
        largest_linear=max((i * o for _, i, o in modules), default=0),
        embedding_params=embedding,
        head_params=head,
        lora_modules=tuple(modules),
        eager_attention=getattr(text, "attn_logit_softcapping", None) is not None,
        checkpoint_bytes=_checkpoint_bytes(config),
        licence=licence,
        source=source,
    )


def _checkpoint_bytes(config: Any) -> int:
    """Bytes per weight of the checkpoint, from the config's dtype (hub checkpoints are mostly 16-bit)."""
    dtype = str(getattr(config, "dtype", None) or "bfloat16")
    return 4 if "float32" in dtype else 2


@lru_cache(maxsize=32)
def _shape_cached(spec: str, catalog_file: str | None, trust_remote_code: bool) -> ModelShape:
    """Resolve and count a model once per process (suggestions and tables call this many times)."""
    models = cat.load_models(catalog_file)
    found = cat.find_model(spec, models)
    if found is not None:
        model_id, entry = found
        shape = shape_from_config(config_from_catalogue(entry), model_id, "catalogue", entry.licence)
        # finetune.models converts bundled GGUF models to fp32 safetensors.
        return replace(shape, checkpoint_bytes=4) if spec.startswith("bundled:") else shape
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if spec.startswith("bundled:") or path.exists():
        from finetune.models import model_license, resolve_base_model

        source = resolve_base_model(spec)
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        return shape_from_config(config, spec, "config", model_license(source))
    try:  # a hub id: only from the local cache, never the network (estimates must work offline)
        config = AutoConfig.from_pretrained(spec, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        raise ModelError(
            f"{spec}: not in the model catalogue (finetune/catalog/models.yaml) and no config.json in the "
            f"local cache; add its architecture, sizes and vocab to {cat.finetune_home() / 'models.yaml'}"
        ) from None
    return shape_from_config(config, spec, "config")


def model_shape(
    spec: str, catalog_file: str | Path | None = None, trust_remote_code: bool = False
) -> ModelShape:
    """The shape of a base model: catalogue entry, local config.json, or the hub cache's config.json."""
    return _shape_cached(spec, str(catalog_file) if catalog_file else None, trust_remote_code)


# --- one training setup on one device ------------------------------------------------------------


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

    @property
    def training_gb(self) -> float:
        """The sum of the components: the peak of a training step."""
        return (self.weights_gb + self.lora_gb + self.optimizer_gb + self.activations_gb + self.logits_gb
                + self.overhead_gb)

    @property
    def total_gb(self) -> float:
        """The predicted peak: a training step's, or loading's when that is higher (CPU quantisation)."""
        return max(self.training_gb, self.loading_peak_gb)

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


def lora_params(shape: ModelShape, r: int, target_modules: Targets = "all-linear") -> int:
    """Trainable LoRA weights: r x (in + out) for each adapted linear, in every layer."""
    return shape.layers * sum(r * (i + o) for _, i, o in _targets(shape, target_modules))


def weights_bytes(shape: ModelShape, setup: Setup, a: dict[str, Any]) -> float:
    """Bytes of the frozen base weights as stored for training."""
    unquantised = shape.embedding_params + shape.head_params + shape.other_params
    if setup.bits is None:
        # finetune.models loads frozen weights in the compute precision (bf16 on a CPU too).
        return shape.params * setup.compute_bytes
    # Non-quantised parts take the configured kbit upcast (or fp32 if asked); on a CPU in bf16
    # finetune.train.keep_frozen_weights_in_bf16 casts them back to bf16.
    other = max(int(a["kbit_unquantized_bytes"]), setup.compute_bytes)
    if _cpu_bf16(setup):
        other = 2
    if setup.bits == 4:
        block = int(a["nf4_block_size"])
        if setup.double_quant:
            constants = 1 / block + 4 / (block * int(a["double_quant_block_size"]))
        else:
            constants = 4 / block
        return shape.layer_linear_params * (0.5 + constants) + unquantised * other
    return shape.layer_linear_params + 4 * shape.layer_linear_out + unquantised * other


def _cpu_bf16(setup: Setup) -> bool:
    """A CPU run in bf16: every frozen weight in bf16 and LoRA inputs left in bf16 (finetune.train)."""
    return setup.device == "cpu" and setup.precision == "bf16"


def _fp32_storage(setup: Setup, a: dict[str, Any]) -> tuple[bool, bool]:
    """(layer linears stored in fp32, embeddings/head stored in fp32) for this setup."""
    if setup.precision == "fp32":
        return setup.bits is None, True
    if setup.bits is None or _cpu_bf16(setup):
        return False, False
    return False, int(a["kbit_unquantized_bytes"]) >= 4


def _activation_mode(setup: Setup, a: dict[str, Any]) -> str:
    """Which row of activation_coefficients applies."""
    if setup.precision == "fp32":
        mode = "fp32"
    elif _cpu_bf16(setup):
        mode = "cpu_bf16"
    elif setup.bits is not None and int(a["kbit_unquantized_bytes"]) >= 4:
        mode = "kbit"
    else:
        mode = "autocast" if a.get("autocast_16bit", True) else "pure16"
    return mode + ("_dropout" if setup.lora_dropout > 0 else "")


def activation_bytes_per_token_layer(shape: ModelShape, setup: Setup, a: dict[str, Any]) -> float:
    """Bytes a decoder layer saves for backward per token (Korthikanti-style term, measured coefficients)."""
    c = a["activation_coefficients"][_activation_mode(setup, a)]
    b = setup.compute_bytes
    mlp_share = 1.0 if shape.gated_mlp else 0.5  # fc -> act -> proj keeps half the tensors of gate/up/act/mul
    per = c["c_h"] * shape.hidden + c["c_q"] * shape.q_dim + c["c_i"] * shape.intermediate * mlp_share
    per += setup.lora_r * len(_targets(shape, setup.target_modules)) * b  # LoRA A outputs, kept for B's grad
    per += setup.seq * b  # the additive padding mask, copied per layer
    if shape.eager_attention:
        per += 2 * shape.heads * setup.seq * b  # scores and probabilities (s x s per head)
    elif _math_attention(setup):
        per += 4 * shape.heads * setup.seq * b  # torch's matmul SDPA keeps four s x s tensors per head (measured)
    return per


def _math_attention(setup: Setup) -> bool:
    """Whether finetune.train.attention_kernels picks torch's matmul attention for this setup."""
    from finetune.train import MATH_ATTENTION_MAX_WIDTH

    return _cpu_bf16(setup) and not setup.checkpointing and setup.seq <= MATH_ATTENTION_MAX_WIDTH


def activations(shape: ModelShape, setup: Setup, a: dict[str, Any], checkpointing: bool) -> float:
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


def memory(shape: ModelShape, setup: Setup, a: dict[str, Any] | None = None) -> Memory:
    """Peak memory per device for one training step (the sum of the parts at the start of backward)."""
    a = a or assumptions()
    n = setup.num_gpus
    weights = weights_bytes(shape, setup, a)
    n_lora = lora_params(shape, setup.lora_r, setup.target_modules)
    lora = n_lora * a["lora_param_bytes"]
    optimizer = n_lora * (a["lora_param_bytes"] + a["adam_state_bytes"])  # gradients + two moments
    act_ckpt = activations(shape, setup, a, checkpointing=True)
    act_full = activations(shape, setup, a, checkpointing=False)
    acts = act_ckpt if setup.checkpointing else act_full
    logits = setup.batch * setup.seq * setup.logits_fraction * shape.vocab * a["logits_bytes_per_element"]
    if n > 1 and setup.strategy != "ddp":
        # ZeRO-2 shards gradients and optimizer state; FSDP / ZeRO-3 shard the weights too, and gather
        # one layer's full weights at a time (plus one prefetched).
        optimizer /= n
        if setup.strategy in ("fsdp", "zero3"):
            gather = 2 * weights / max(shape.layers, 1)
            weights = weights / n + gather
            lora /= n
    if setup.device == "cuda":
        base = a["cuda_context_gb"] * GIB
        if setup.bits is not None:
            base += shape.largest_linear * setup.compute_bytes  # the dequantised weight of the current matmul
    else:
        base = a["cpu_process_baseline_gb"] * GIB
    margin = a["allocator_margin"] if setup.device == "cuda" else a["cpu_allocator_margin"]
    overhead = base + margin * (acts + logits)
    loading = 0.0
    if setup.device == "cpu" and (setup.bits is not None or shape.checkpoint_bytes != setup.compute_bytes):
        # Quantising on a CPU, or converting the checkpoint's dtype (the bundled fp32 file loaded in bf16),
        # reads the checkpoint (memory-mapped: its pages count as resident) while it builds a 16-bit copy
        # of the weights (measured on the bundled model: 1405 MB peak quantising; 818 MB over the process
        # before loading for the bf16 conversion, 810 MB predicted). A checkpoint already in the compute
        # dtype stays mapped and is only read as training touches it, so it has no such peak.
        loading = base + shape.params * (shape.checkpoint_bytes + setup.compute_bytes)
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
    )


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
                          a: dict[str, Any] | None = None) -> float:
    """Time a step spends whatever its tokens: launching kernels (GPU) or dispatching ops (CPU), per layer.

    On a CPU it is counted in matmul-equivalent FLOPs at the same peak as the compute, so that a busy
    machine, which slows both alike, keeps the ratio between two configurations' step times.
    """
    a = a or assumptions()
    if setup.device == "cuda":
        return shape.layers * float(a["step_overhead_s_per_layer"])
    return shape.layers * float(a["cpu_step_overhead_gflop_per_layer"]) / (peak_tflops * 1000)


def seconds_per_micro_batch(shape: ModelShape, setup: Setup, peak_tflops: float, utilisation: float,
                            a: dict[str, Any] | None = None) -> float:
    """Predicted time of one forward+backward over `batch x seq` tokens on one device."""
    a = a or assumptions()
    table = a["quantised_slowdown"] if setup.device == "cuda" else a["cpu_quantised_slowdown"]
    slowdown = float(table.get(setup.bits, 1.0)) if setup.bits else 1.0
    work = setup.batch * setup.seq * flops_per_token(shape, setup)
    compute = work / (peak_tflops * 1e12 * utilisation) * slowdown
    return compute + step_overhead_seconds(shape, setup, peak_tflops, a)


def fits(mem: Memory, capacity_gb: float) -> bool:
    """Whether a predicted peak fits in `capacity_gb` of usable memory."""
    return mem.total_gb <= capacity_gb


def max_batch_size(
    shape: ModelShape, setup: Setup, capacity_gb: float, a: dict[str, Any], limit: int = 4096
) -> int:
    """The largest micro-batch that fits at the setup's sequence length (0 if even one row does not)."""
    if not fits(memory(shape, replace(setup, batch=1), a), capacity_gb):
        return 0
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(memory(shape, replace(setup, batch=mid), a), capacity_gb):
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_seq_len(shape: ModelShape, setup: Setup, capacity_gb: float, a: dict[str, Any]) -> int:
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


def suggestions(shape: ModelShape, setup: Setup, capacity_gb: float, grad_accum: int,
                a: dict[str, Any]) -> list[str]:
    """Concrete recipe changes that make a setup fit, least invasive first, each with its predicted peak."""
    out: list[str] = []

    def note(change: str, candidate: Setup) -> bool:
        """Record `change` if `candidate` fits; say whether it did."""
        total = memory(shape, candidate, a).total_gb
        if total <= capacity_gb:
            out.append(f"{change}: {total:.1f} GB")
            return True
        return False

    best_batch = max_batch_size(shape, setup, capacity_gb, a)
    if 0 < best_batch < setup.batch:
        effective = setup.batch * grad_accum
        accum = math.ceil(effective / best_batch)
        note(f"training.batch_size={best_batch} training.gradient_accumulation={accum} "
             f"(same effective batch {effective})", replace(setup, batch=best_batch))
    if not setup.checkpointing:
        note("training.gradient_checkpointing=true", replace(setup, checkpointing=True))
    if setup.bits != 4:
        note("quantization.bits=4 (QLoRA)", replace(setup, bits=4))
    seq = max_seq_len(shape, setup, capacity_gb, a)
    if 0 < seq < setup.seq:
        note(f"dataset.max_length={seq}", replace(setup, seq=seq))
    if setup.lora_r > 8:
        note(f"lora.r={setup.lora_r // 2}", replace(setup, lora_r=setup.lora_r // 2))
    if out:
        return out
    # Nothing alone is enough: try everything at once, then say how much memory it needs.
    lean = replace(setup, bits=4, checkpointing=True, batch=1)
    if note("all of: quantization.bits=4, training.gradient_checkpointing=true, training.batch_size=1", lean):
        return out
    seq = max_seq_len(shape, lean, capacity_gb, a)
    if seq >= 16:
        note(f"all of: quantization.bits=4, gradient checkpointing, batch_size=1, dataset.max_length={seq}",
             replace(lean, seq=seq))
        return out
    for n, strategy in ((2, "fsdp"), (4, "fsdp"), (8, "fsdp")):
        if note(f"--gpus {n} --strategy {strategy} with 4-bit, checkpointing and batch_size=1",
                replace(lean, num_gpus=n, strategy=strategy)):
            return out
    need = memory(shape, lean, a).total_gb / a["usable_memory_fraction"]
    out.append(f"needs a GPU with at least {need:.0f} GB even at 4-bit, batch 1")
    return out


@lru_cache(maxsize=1)
def _assumptions_cached() -> str:
    """The assumptions file, read once (as JSON text so callers get fresh copies)."""
    return json.dumps(cat.load_assumptions())


def assumptions() -> dict[str, Any]:
    """A fresh copy of the estimator's assumptions (catalog/estimate_assumptions.yaml)."""
    data = json.loads(_assumptions_cached())
    for key in ("quantised_slowdown", "cpu_quantised_slowdown"):
        data[key] = {int(k): v for k, v in data[key].items()}
    return data


# --- the dataset's tokens ------------------------------------------------------------------------


@dataclass
class Tokens:
    """How many tokens a run trains on, per epoch, and how they were counted."""

    rows_train: int
    rows_eval: int
    lengths: list[int]  # per training row, truncated to max_length (estimated rows repeat a sample)
    eval_lengths: list[int]
    method: str  # "tokenizer", "characters" (no tokenizer on disk) or "sampled" (large file)
    truncated_rows: int = 0
    prompt_lengths: list[int] = field(default_factory=list)  # tokens before the first trained token

    @property
    def per_epoch(self) -> int:
        """Training tokens per epoch (what hosted APIs bill per epoch)."""
        return sum(self.lengths)

    def to_dict(self) -> dict[str, Any]:
        """JSON view without the per-row lengths."""
        return {"rows_train": self.rows_train, "rows_eval": self.rows_eval, "per_epoch": self.per_epoch,
                "eval_tokens": sum(self.eval_lengths), "method": self.method,
                "truncated_rows": self.truncated_rows, "longest": max(self.lengths, default=0)}


def _char_tokens(messages: list[dict[str, Any]], a: dict[str, Any]) -> int:
    """Tokens of a conversation estimated from its characters (ASCII ~4 per token, other scripts ~1)."""
    if not messages:
        return 0
    ascii_chars = other = 0
    for message in messages:
        text = str(message.get("content", ""))
        n_ascii = sum(1 for ch in text if ord(ch) < 128)
        ascii_chars += n_ascii
        other += len(text) - n_ascii
    estimate = ascii_chars / a["chars_per_token_ascii"] + other / a["chars_per_token_other"]
    return int(estimate + a["template_tokens_per_message"] * len(messages)) + 1


def _prompt_part(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages before the first assistant reply (what the loss never sees)."""
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            return messages[:index]
    return messages


def _tokenizer_for(recipe: Recipe) -> Any | None:
    """The recipe's tokenizer if it is on disk (bundled, local folder or hub cache); None otherwise."""
    spec = recipe.base_model
    try:
        if spec.startswith("bundled:") or Path(spec).expanduser().exists():
            from finetune.models import load_tokenizer

            return load_tokenizer(recipe)
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec, "tokenizer_config.json"), str):
            return None
        from transformers import AutoTokenizer

        from finetune.models import named_chat_template

        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True,
                                                  trust_remote_code=recipe.trust_remote_code)
        if recipe.tokenizer.chat_template or not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = named_chat_template(recipe.tokenizer.chat_template or "chatml")
        return tokenizer
    except (OSError, ValueError, ModelError, ImportError):
        return None


def _with_system(messages: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    """The messages as trained: the recipe's system prompt first when the row has none."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt and (not plain or plain[0]["role"] != "system"):
        plain.insert(0, {"role": "system", "content": system_prompt})
    return plain


def _dataset_path(recipe: Recipe, recipe_dir: Path | None) -> Path:
    """The dataset file: as written, else relative to the recipe's folder."""
    path = Path(recipe.dataset.path).expanduser()
    beside = recipe_dir / path if recipe_dir is not None and not path.is_absolute() else None
    if not path.exists() and beside is not None and beside.exists():
        return beside
    if not path.is_file():
        raise DataError(f"{recipe.dataset.path}: dataset file not found (dataset.path)")
    return path


def _token_lengths(tokenizer: Any, conversations: list[list[dict[str, Any]]],
                   a: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(whole conversation, prompt part) token counts per row: tokenizer and chat template, or characters."""
    if tokenizer is None:
        return ([_char_tokens(m, a) for m in conversations],
                [_char_tokens(_prompt_part(m), a) for m in conversations])
    if not conversations:
        return [], []
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in conversations]
    prompts = [tokenizer.apply_chat_template(_prompt_part(m), tokenize=False, add_generation_prompt=True)
               if _prompt_part(m) else "" for m in conversations]
    full = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    head = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return full, head


def count_tokens(recipe: Recipe, recipe_dir: Path | None = None, a: dict[str, Any] | None = None) -> Tokens:
    """Tokens per training row: tokenizer and chat template if on disk, else estimated from the text."""
    from finetune.data import load_conversations, split_train_eval

    a = a or assumptions()
    path = _dataset_path(recipe, recipe_dir)
    max_len = recipe.dataset.max_length
    if path.stat().st_size / 1e6 > a["large_dataset_mb"]:
        return _sampled_tokens(recipe, path, a)
    conversations = load_conversations(path, recipe.dataset.format)
    train, held_out = split_train_eval(conversations, recipe.dataset.eval_fraction, recipe.training.seed)
    tokenizer = _tokenizer_for(recipe)
    rendered = [_with_system(c.messages, recipe.system_prompt) for c in train]
    full, prompts = _token_lengths(tokenizer, rendered, a)
    eval_full, eval_prompts = _token_lengths(
        tokenizer, [_with_system(c.messages, recipe.system_prompt) for c in held_out], a)
    # finetune.data drops rows whose reply is cut off entirely by max_length (nothing left to learn).
    kept = [(n, p) for n, p in zip(full, prompts, strict=True) if p < max_len]
    kept_eval = [n for n, p in zip(eval_full, eval_prompts, strict=True) if p < max_len]
    if train and not kept:
        raise DataError(f"{path}: no training row keeps any reply within dataset.max_length={max_len} "
                        f"(prompts are {min(prompts)}+ tokens); raise max_length")
    return Tokens(
        rows_train=len(kept),
        rows_eval=len(kept_eval),
        lengths=[min(n, max_len) for n, _ in kept],
        eval_lengths=[min(n, max_len) for n in kept_eval],
        method="tokenizer" if tokenizer is not None else "characters",
        truncated_rows=sum(1 for n, _ in kept if n > max_len),
        prompt_lengths=[p for _, p in kept],
    )


def _sampled_tokens(recipe: Recipe, path: Path, a: dict[str, Any], sample: int = 2000) -> Tokens:
    """A large file: count its rows, estimate tokens from the characters of a sample of them."""
    rows = 0
    lengths: list[int] = []
    prompts: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            rows += 1
            if len(lengths) < sample:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                messages = row.get("messages") if isinstance(row, dict) else None
                if not isinstance(messages, list):
                    values = [str(v) for v in row.values()] if isinstance(row, dict) else [str(row)]
                    messages = [{"role": "user", "content": " ".join(values[:-1])},
                                {"role": "assistant", "content": values[-1] if values else ""}]
                messages = _with_system(messages, recipe.system_prompt)
                lengths.append(_char_tokens(messages, a))
                prompts.append(_char_tokens(_prompt_part(messages), a))
    if not lengths:
        raise DataError(f"{path}: no readable JSON rows")
    n_eval = int(round(rows * recipe.dataset.eval_fraction))
    n_train = rows - n_eval
    max_len = recipe.dataset.max_length
    # Repeat the sample's lengths so padding and truncation follow its distribution.
    train = [min(lengths[i % len(lengths)], max_len) for i in range(n_train)]
    held = [min(lengths[i % len(lengths)], max_len) for i in range(n_eval)]
    heads = [min(prompts[i % len(prompts)], max_len) for i in range(n_train)]
    truncated = int(sum(1 for n in lengths if n > max_len) * n_train / len(lengths))
    return Tokens(n_train, n_eval, train, held, "sampled", truncated, heads)


def _batches(tokens: Tokens, batch: int, group_by_length: bool, seed: int) -> list[list[tuple[int, int]]]:
    """Training rows as (length, prompt length) grouped into micro-batches the way the sampler orders them."""
    prompts = tokens.prompt_lengths
    if len(prompts) != len(tokens.lengths):
        prompts = [0] * len(tokens.lengths)
    pairs = list(zip(tokens.lengths, prompts, strict=True))
    if group_by_length:
        pairs.sort(key=lambda p: -p[0])  # transformers' length-grouped sampler: similar lengths together
    else:
        random.Random(seed).shuffle(pairs)
    return [pairs[i:i + batch] for i in range(0, len(pairs), batch)]


def padded_tokens(lengths: list[int], batch: int, group_by_length: bool, seed: int) -> tuple[int, int]:
    """(tokens the model computes on, longest row) when rows are right-padded to their batch's longest."""
    batches = _batches(Tokens(len(lengths), 0, lengths, [], ""), batch, group_by_length, seed)
    return sum(max(n for n, _ in b) * len(b) for b in batches), max(lengths, default=0)


def logits_fractions(tokens: Tokens, batch: int, group_by_length: bool, seed: int) -> tuple[float, float]:
    """Share of positions whose logits finetune.train computes: (in the longest batch, over all tokens)."""
    batches = _batches(tokens, batch, group_by_length, seed)
    if not batches:
        return 1.0, 1.0
    kept_total = width_total = 0
    peak, peak_width = 1.0, -1
    for rows in batches:
        width = max(n for n, _ in rows)
        # Logits are kept from the earliest label position in the batch to its end.
        start = min(min(p, n - 1) for n, p in rows)
        kept = max(1, width - max(start, 0))
        kept_total += kept * len(rows)
        width_total += width * len(rows)
        if width > peak_width:
            peak, peak_width = kept / width, width
    return peak, kept_total / max(width_total, 1)


# --- devices -------------------------------------------------------------------------------------


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


def device_for_gpu(gpu: cat.GPU, a: dict[str, Any]) -> Device:
    """A catalogue GPU as an estimation target."""
    return Device(
        name=gpu.name, kind="cuda", memory_gb=gpu.memory_gb,
        capacity_gb=gpu.memory_gb * a["usable_memory_fraction"],
        peak_tflops={p: gpu.tflops(p) for p in ("fp32", "bf16", "fp16")},
        power_w=gpu.power_w, gpu=gpu, best_precision=gpu.best_precision(),
    )


def this_machine(gpus: list[cat.GPU], a: dict[str, Any]) -> Device:
    """The machine we run on: its CUDA GPU (catalogue speeds where known) or its CPU (measured matmuls)."""
    from finetune.hardware import choose_precision, detect

    hw = detect()
    if hw.device == "cuda":
        known = cat.match_device_name(hw.name, gpus)
        peak = {p: known.tflops(p) for p in ("fp32", "bf16", "fp16")} if known else {}
        if not peak:
            peak = {"fp32": 20.0, "bf16": 80.0, "fp16": 80.0}  # an unknown card: a mid-range guess
        return Device(
            name=f"this machine ({hw.name})", kind="cuda", memory_gb=hw.memory_gb,
            capacity_gb=hw.memory_gb * a["usable_memory_fraction"], peak_tflops=peak,
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
        capacity_gb=available * a["cpu_usable_memory_fraction"],
        peak_tflops={"fp32": fp32, "bf16": bf16, "fp16": fp32},
        power_w=a["cpu_power_w"], this_machine=True, best_precision=choose_precision("auto", hw),
    )


def _plausible_cpu_gflops(cached: dict[str, float], a: dict[str, Any]) -> dict[str, float]:
    """The CPU's matmul speed: finetune.hardware's cached figures, re-measured if they look disturbed.

    The cache keeps one short measurement; taken while other processes hammer the CPU it can be 40x
    too low (seen on a shared 2-core machine), which would make every time estimate here wrong.
    """
    floor = (os.cpu_count() or 1) * float(a["cpu_min_gflops_per_core"])
    if cached.get("fp32", 0.0) >= floor:
        return {"fp32": cached["fp32"], "bf16": cached.get("bf16", cached["fp32"])}
    from finetune.hardware import measure_matmul_gflops

    fresh = {name: measure_matmul_gflops(name) for name in ("fp32", "bf16")}
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


# --- the plan ------------------------------------------------------------------------------------


@dataclass
class GpuRow:
    """One target's verdict: fits, largest batch and sequence, time, cost, and what to change."""

    name: str
    memory_gb: float
    fits: bool
    total_gb: float
    hours: float
    cost: dict[str, Any]
    max_batch_size: int
    max_seq_len: int
    precision: str
    gradient_checkpointing: bool
    seconds_per_step: float
    utilisation: float
    num_gpus: int
    strategy: str
    suggestions: list[str] = field(default_factory=list)
    this_machine: bool = False
    memory: Memory | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON view of the row."""
        data = {k: v for k, v in asdict(self).items() if k != "memory"}
        data["per_gpu"] = self.memory.to_dict() if self.memory else None
        data["hours"] = round(self.hours, 4)
        data["total_gb"] = round(self.total_gb, 3)
        data["seconds_per_step"] = round(self.seconds_per_step, 4)
        if data["cost"].get("amount") is not None:
            data["cost"]["amount"] = round(data["cost"]["amount"], 4)
        return data


@dataclass
class Estimate:
    """The whole answer of `finetune estimate`."""

    recipe_name: str
    model: ModelShape
    trainable_params: int
    setup: Setup
    memory: Memory
    memory_target: str
    tokens: Tokens
    epochs: float
    compute_tokens: int
    steps: int
    rows: list[GpuRow]
    hosted: list[dict[str, Any]]
    currency: str
    assumptions: dict[str, Any]
    probe: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None  # a speed factor from an earlier --probe on this machine

    def to_json(self) -> dict[str, Any]:
        """The documented `--json` schema (docs/estimate.md)."""
        return {
            "recipe": self.recipe_name,
            "model": {"name": self.model.name, "params": self.model.params,
                      "trainable_params": self.trainable_params, "architecture": self.model.architecture,
                      "layers": self.model.layers, "hidden_size": self.model.hidden,
                      "vocab_size": self.model.vocab, "licence": self.model.licence,
                      "source": self.model.source},
            "setup": asdict(self.setup),
            "memory": {**self.memory.to_dict(), "target": self.memory_target},
            "tokens": {**self.tokens.to_dict(), "epochs": self.epochs, "compute_tokens": self.compute_tokens,
                       "total_training_tokens": int(self.tokens.per_epoch * self.epochs),
                       "steps": self.steps},
            "gpus": [row.to_dict() for row in self.rows],
            "hosted_apis": self.hosted,
            "currency": self.currency,
            "probe": self.probe,
            "calibration": self.calibration,
            "assumptions": {k: self.assumptions[k] for k in
                            ("utilisation", "cpu_utilisation", "quantised_slowdown", "scaling_efficiency",
                             "power_fraction", "cuda_context_gb", "allocator_margin")},
        }


def _catalogue_gpu(name: str) -> cat.GPU | None:
    """The catalogue GPU a recipe's `cost.gpu` names, or None for a free-form label like 'cpu-2core'."""
    try:
        return cat.find_gpu(name, cat.load_gpus())
    except cat.CatalogError:
        return None


def _same_gpu(name: str, gpu: cat.GPU) -> bool:
    """Whether a user's GPU name means this catalogue entry."""
    return cat.normalise_gpu_name(name) in [cat.normalise_gpu_name(n) for n in [gpu.name, *gpu.aliases]]


def _row_cost(recipe: Recipe, device: Device, seconds: float, num_gpus: int, currency: str,
              rates: cat.Rates, a: dict[str, Any]) -> dict[str, Any]:
    """A row's cost: the recipe's price for its own GPU, electricity for consumer cards, else rental."""
    section = recipe.cost
    if device.this_machine:
        # The recipe's price is for this machine unless it names a catalogue GPU this machine is not.
        named = section.gpu is not None and _catalogue_gpu(section.gpu) is not None
        own = not named or (device.gpu is not None and _same_gpu(section.gpu, device.gpu))
    else:
        own = section.gpu is not None and device.gpu is not None and _same_gpu(section.gpu, device.gpu)
    if own and (section.hourly_rate or section.electricity):
        # The recipe's cost.power_w is what its own machine draws under load: use it as is.
        power, share = (section.power_w, 1.0) if section.power_w else (device.power_w, a["power_fraction"])
        result = run_cost(section, seconds, gpu_power_w=power, utilisation=share,
                          to_currency=currency, num_gpus=num_gpus, rates=rates)
        return {**result, "price": "recipe"}
    if section.electricity and device.gpu is not None and device.gpu.kind == "consumer":
        electricity = {"electricity": section.electricity.model_dump()}
        result = run_cost(electricity, seconds, gpu_power_w=device.power_w, utilisation=a["power_fraction"],
                          to_currency=currency, num_gpus=num_gpus, rates=rates)
        return {**result, "price": "recipe"}
    if device.gpu is not None and device.gpu.rental is not None:
        rate = {"hourly_rate": {"amount": device.gpu.rental.usd_per_hour, "currency": "USD"}}
        result = run_cost(rate, seconds, to_currency=currency, num_gpus=num_gpus, rates=rates)
        return {**result, "price": "catalogue", "price_as_of": device.gpu.rental.as_of}
    return {"amount": None, "currency": currency, "basis": "none", "estimated": False}


def run_setups(recipe: Recipe, device: Device, tokens: Tokens, num_gpus: int = 1,
               strategy: str = "ddp") -> tuple[Setup, Setup]:
    """(peak-memory setup: the longest batch, average-step setup: mean padded length) for a device."""
    t = recipe.training
    longest = max(tokens.lengths, default=recipe.dataset.max_length)
    seq = max(16, min(recipe.dataset.max_length, longest))
    peak_frac, mean_frac = logits_fractions(tokens, t.batch_size, t.group_by_length, t.seed)
    peak = replace(setup_for(recipe, device, num_gpus, strategy, seq=seq), logits_fraction=peak_frac)
    padded, _ = padded_tokens(tokens.lengths, t.batch_size, t.group_by_length, t.seed)
    mean_seq = max(1, round(padded / max(1, len(tokens.lengths)))) if tokens.lengths else seq
    return peak, replace(peak, seq=mean_seq, logits_fraction=mean_frac)


def _row(recipe: Recipe, shape: ModelShape, device: Device, tokens: Tokens, num_gpus: int, strategy: str,
         currency: str, rates: cat.Rates, a: dict[str, Any], speed_factor: float = 1.0) -> GpuRow:
    """Estimate one target (`speed_factor`: measured over predicted step time, from a probe)."""
    t = recipe.training
    setup, average = run_setups(recipe, device, tokens, num_gpus, strategy)
    mem = memory(shape, setup, a)
    ok = fits(mem, device.capacity_gb)
    util = a["utilisation"] if device.kind == "cuda" else a["cpu_utilisation"]
    peak = device.peak_tflops.get(setup.precision) or device.peak_tflops["fp32"]
    micro, _ = _work(recipe, tokens, setup)
    per_micro = seconds_per_micro_batch(shape, average, peak, util, a) * speed_factor
    eff = a["scaling_efficiency"].get(strategy, 1.0) if setup.num_gpus > 1 else 1.0
    eval_seconds = _eval_seconds(recipe, shape, average, tokens, peak, util) * speed_factor
    util /= speed_factor
    seconds = (per_micro * micro + eval_seconds) / (setup.num_gpus * eff)
    cost = _row_cost(recipe, device, seconds, setup.num_gpus, currency, rates, a)
    return GpuRow(
        name=device.name, memory_gb=round(device.memory_gb, 2), fits=ok, total_gb=mem.total_gb,
        hours=seconds / 3600, cost=cost,
        max_batch_size=max_batch_size(shape, setup, device.capacity_gb, a),
        max_seq_len=max_seq_len(shape, setup, device.capacity_gb, a),
        precision=setup.precision, gradient_checkpointing=setup.checkpointing,
        seconds_per_step=per_micro * t.gradient_accumulation, utilisation=util,
        num_gpus=setup.num_gpus, strategy=strategy if setup.num_gpus > 1 else "none",
        suggestions=[] if ok else suggestions(shape, setup, device.capacity_gb, t.gradient_accumulation, a),
        this_machine=device.this_machine, memory=mem,
    )


def _work(recipe: Recipe, tokens: Tokens, setup: Setup) -> tuple[int, int]:
    """(micro-batches, padded tokens computed) over the whole run."""
    t = recipe.training
    padded, _ = padded_tokens(tokens.lengths, setup.batch, t.group_by_length, t.seed)
    micro_per_epoch = max(1, math.ceil(tokens.rows_train / setup.batch))
    if t.max_steps:
        micro = t.max_steps * t.gradient_accumulation
        return micro, int(padded / micro_per_epoch * micro)
    micro = math.ceil(micro_per_epoch * t.epochs)
    return micro, int(padded * t.epochs)


def _eval_seconds(recipe: Recipe, shape: ModelShape, setup: Setup, tokens: Tokens, peak: float,
                  util: float) -> float:
    """Forward-only evaluation passes: one per epoch (a third of a training step's work per token)."""
    if not tokens.eval_lengths:
        return 0.0
    passes = max(1, math.ceil(recipe.training.epochs))
    work = sum(tokens.eval_lengths) * passes * flops_per_token(shape, replace(setup, checkpointing=False)) / 3
    return work / (peak * 1e12 * util)


def hosted_rows(total_tokens: int, params: int, currency: str, rates: cat.Rates) -> list[dict[str, Any]]:
    """What the same training tokens cost on hosted fine-tuning services (reference rows)."""
    out = []
    for api in cat.load_hosted_apis():
        if not api.covers(params) and (api.min_params_b is not None or api.max_params_b is not None):
            continue
        amount = total_tokens / 1e6 * api.price_per_million_tokens
        out.append({"name": api.name, "amount": round(convert(amount, api.currency, currency, rates), 4),
                    "currency": currency, "price_per_million_tokens": api.price_per_million_tokens,
                    "price_currency": api.currency, "as_of": api.as_of, "source": api.source})
    return out


def _sort_key(row: GpuRow) -> tuple[int, int, float, float]:
    """Fitting rows first, cheapest first (rows without a price after priced ones), then fastest."""
    amount = row.cost.get("amount")
    return (0 if row.fits else 1, 0 if amount is not None else 1, amount or 0.0, row.hours)


def estimate(recipe: Recipe, gpu: str | None = None, num_gpus: int = 1, strategy: str | None = None,
             probe: bool = False, catalog_file: str | Path | None = None,
             recipe_dir: Path | None = None) -> Estimate:
    """Plan a recipe: memory by component, verdict per GPU (or all), hours, cost and hosted-API reference."""
    a = assumptions()
    strategy = strategy or (recipe.distributed.strategy if recipe.distributed.strategy != "none" else "ddp")
    if strategy not in STRATEGIES:
        raise RecipeError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if num_gpus < 1:
        raise RecipeError("--gpus: expected 1 or more")
    shape = model_shape(recipe.base_model, catalog_file, recipe.trust_remote_code)
    gpus = cat.load_gpus(catalog_file)
    rates = cat.load_rates()
    currency = display_currency(recipe.cost)
    convert(1.0, currency, "USD", rates)  # fail early on an unknown display currency
    tokens = count_tokens(recipe, recipe_dir, a)
    devices: list[Device] = []
    if gpu and gpu.lower() == "all":
        devices = [device_for_gpu(g, a) for g in gpus]
    elif gpu:
        devices = [device_for_gpu(cat.find_gpu(gpu, gpus), a)]
    elif recipe.cost.gpu:
        try:
            devices = [device_for_gpu(cat.find_gpu(recipe.cost.gpu, gpus), a)]
        except cat.CatalogError:
            devices = []  # a label for the user's own machine (e.g. "cpu-2core"): priced as this machine
    probe_info = calibration = None
    if probe:
        probe_info = run_probe_and_compare(recipe, shape, gpus, tokens, a)
        calibration = remember_speed(probe_info["speed_factor"], recipe.name)
    if not gpu or probe or gpu.lower() == "all":
        devices.append(this_machine(gpus, a))
        calibration = calibration or remembered_speed()  # only this machine's row is scaled by it
    machine_speed = calibration["speed_factor"] if calibration else 1.0
    rows = [_row(recipe, shape, d, tokens, num_gpus, strategy, currency, rates, a,
                 machine_speed if d.this_machine else 1.0) for d in devices]
    if gpu and gpu.lower() == "all":
        rows.sort(key=_sort_key)
    # The memory breakdown shown is for the recipe's own GPU: the catalogue GPU its cost.gpu names, or
    # this machine when cost.gpu is a label of the user's own (e.g. "cpu-2core"); else the first row.
    named = _catalogue_gpu(recipe.cost.gpu) if recipe.cost.gpu else None
    if named is not None:
        primary = next((r for r in rows if r.name == named.name), rows[0])
    elif recipe.cost.gpu:
        primary = next((r for r in rows if r.this_machine), rows[0])
    else:
        primary = rows[0]
    primary_device = next(d for d in devices if d.name == primary.name)
    micro, compute = _work(recipe, tokens, setup_for(recipe, primary_device))
    primary_setup, _ = run_setups(recipe, primary_device, tokens, num_gpus, strategy)
    total_tokens = int(tokens.per_epoch * recipe.training.epochs)
    if recipe.training.max_steps:
        total_tokens = compute
    return Estimate(
        recipe_name=recipe.name,
        model=shape,
        trainable_params=lora_params(shape, recipe.lora.r, recipe.lora.target_modules),
        setup=primary_setup,
        memory=primary.memory,
        memory_target=primary.name,
        tokens=tokens,
        epochs=recipe.training.epochs,
        compute_tokens=compute,
        steps=math.ceil(micro / recipe.training.gradient_accumulation),
        rows=rows,
        hosted=hosted_rows(total_tokens, shape.params, currency, rates),
        currency=currency,
        assumptions=a,
        probe=probe_info,
        calibration=calibration,
    )


# --- measuring this machine ----------------------------------------------------------------------


def predicted_step(recipe: Recipe, shape: ModelShape, device: Device, measured: dict[str, Any],
                   tokens: Tokens, utilisation: float, a: dict[str, Any]) -> dict[str, float]:
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
        total -= a["cuda_context_gb"]  # the probe reports torch's allocated peak, which excludes the context
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


def run_probe_and_compare(recipe: Recipe, shape: ModelShape, gpus: list[cat.GPU], tokens: Tokens,
                          a: dict[str, Any], steps: int = 4) -> dict[str, Any]:
    """Run a few real training steps here (finetune.train.run_probe) and compare them with the prediction."""
    try:
        from finetune.train import run_probe
    except ImportError as exc:
        raise FinetuneError(f"--probe needs finetune.train.run_probe, not importable: {exc}") from None
    device = this_machine(gpus, a)
    measured = run_probe(recipe, steps=steps)
    assumed = a["utilisation"] if device.kind == "cuda" else a["cpu_utilisation"]
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


# --- for `finetune train` ------------------------------------------------------------------------


def estimate_for_training(recipe: Recipe, gpu_name: str | None = None) -> tuple[list[str], bool]:
    """Two short lines (memory vs the device; hours and cost) and whether the run fits, for training."""
    a = assumptions()
    shape = model_shape(recipe.base_model, None, recipe.trust_remote_code)
    gpus = cat.load_gpus()
    device = device_for_gpu(cat.find_gpu(gpu_name, gpus), a) if gpu_name else this_machine(gpus, a)
    try:
        tokens = count_tokens(recipe, None, a)
    except DataError:
        raise
    currency = display_currency(recipe.cost)
    strategy = recipe.distributed.strategy if recipe.distributed.strategy != "none" else "ddp"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    calibration = remembered_speed() if device.this_machine else None
    speed = calibration["speed_factor"] if calibration else 1.0
    row = _row(recipe, shape, device, tokens, world, strategy, currency, cat.load_rates(), a, speed)
    mem = row.memory
    assert mem is not None
    where = "available RAM" if device.kind == "cpu" else "GPU memory"
    verdict = "fits" if row.fits else "does NOT fit"
    line1 = (f"memory: {mem.total_gb:.1f} GB predicted peak vs {device.capacity_gb:.1f} GB usable {where} "
             f"on {device.name}: {verdict}")
    from finetune.cost import format_money

    cost = row.cost
    money = format_money(cost.get("amount"), cost.get("currency", currency))
    basis = f" ({cost['basis']})" if cost.get("basis") not in (None, "none") else ""
    line2 = (f"time: about {_hours_text(row.hours)} for {tokens.per_epoch:,} tokens/epoch x "
             f"{recipe.training.epochs:g} epochs; cost: {money}{basis}")
    if calibration:
        line2 += f"; speed calibrated by the probe of {calibration['measured_at'][:10]}"
    else:
        line2 += "; rough until `finetune estimate --probe` has measured this machine"
    if not row.fits and row.suggestions:
        line1 += f"; try {row.suggestions[0]}"
    return [line1, line2], row.fits


def _hours_text(hours: float) -> str:
    """'3 min', '2.4 h', '5.1 days'."""
    if hours < 1:
        return f"{max(hours * 60, 0.1):.1f} min" if hours * 60 < 10 else f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


hours_text = _hours_text
