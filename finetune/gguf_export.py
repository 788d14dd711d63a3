"""GGUF layout helpers: llama.cpp's tensor names, the rotary row order, LoRA checks and readers.

The GGUF files themselves are written by llama.cpp's own converters (finetune/llama_cpp.py); these helpers
pre-check an adapter (one-line errors before any work) and read files back for tests.
Layouts follow llama.cpp: tensor names from gguf's TensorNameMap (`blk.N.attn_q.weight`), Q and K rows
reordered for llama.cpp's interleaved rotary embedding, 1-D tensors kept in f32, LoRA pairs stored as
`<name>.lora_a` (rank x in) and `<name>.lora_b` (out x rank) with `adapter.lora.alpha` as the scale numerator.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from finetune.errors import ModelError

GGUF_SUFFIX = {"fp32": "f32", "fp16": "f16"}
PEFT_PREFIX = "base_model.model."


# --- names and the rotary permutation (pure) ------------------------------------------------------


def tensor_name_map(n_blocks: int) -> Any:
    """gguf's name map from Hugging Face tensor names to llama.cpp's, for a llama model of n_blocks layers."""
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)


def gguf_tensor_name(hf_name: str, name_map: Any) -> str:
    """llama.cpp's name for a HF weight (model.layers.0.self_attn.q_proj.weight -> blk.0.attn_q.weight)."""
    name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ModelError(f"tensor {hf_name}: no llama.cpp name for it (unexpected in a llama model)")
    return name


def rotary_heads(hf_name: str, config: dict[str, Any]) -> int | None:
    """The head count whose rows the rotary permutation groups: Q uses all heads, K the key/value heads."""
    if ".q_proj." in hf_name:
        return int(config["num_attention_heads"])
    if ".k_proj." in hf_name:
        return int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return None


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K output rows from Hugging Face's half-split rotary layout to llama.cpp's interleaved pairs.

    Within each head HF rotates row i with row i + d/2; llama.cpp rotates rows 2i and 2i + 1. Only rows
    move, so a LoRA pair is permuted by permuting B alone.
    """
    rows = weight.shape[0]
    if rows % (2 * n_head):
        raise ModelError(f"cannot permute {rows} rows into {n_head} rotary heads")
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_rows`: llama.cpp's interleaved rows back to Hugging Face's layout."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def lora_alpha_for_gguf(lora_config: dict[str, Any]) -> float:
    """The `adapter.lora.alpha` that gives llama.cpp's scale alpha/r the same value as peft's scaling."""
    if lora_config.get("use_dora"):
        raise ModelError("adapter_config.json use_dora: llama.cpp has no DoRA; export with --merge instead")
    if lora_config.get("alpha_pattern") or lora_config.get("rank_pattern"):
        raise ModelError(
            "adapter_config.json alpha_pattern/rank_pattern: per-module scales cannot be written as "
            "one llama.cpp alpha; export with --merge instead"
        )
    alpha, rank = float(lora_config["lora_alpha"]), int(lora_config["r"])
    # rsLoRA scales by alpha/sqrt(r); llama.cpp always divides by r.
    return alpha * math.sqrt(rank) if lora_config.get("use_rslora") else alpha


def lora_pairs(state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Group a peft adapter state dict into {base weight name: (A, B)}; anything else is an error."""
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        name = key.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if name.endswith(marker):
                pairs.setdefault(name[: -len(marker)] + ".weight", {})[part] = tensor
                break
        else:
            raise ModelError(
                f"adapter tensor {key}: only LoRA A/B matrices can go into a llama.cpp adapter "
                "(embeddings or modules_to_save need --merge)"
            )
    missing = [n for n, p in pairs.items() if len(p) != 2]
    if missing:
        raise ModelError(f"adapter tensor {missing[0]}: has only one of lora_A/lora_B")
    return {name: (p["lora_A"], p["lora_B"]) for name, p in sorted(pairs.items())}


def conv1d_pairs_for_converter(state: dict[str, Any], conv1d: set[str]) -> dict[str, Any]:
    """The adapter with its LoRA pairs on Conv1D layers (GPT-2's) in the orientation llama.cpp's converter wants.

    peft stores every pair as a Linear's (A: rank x in, B: out x rank), also on Conv1D layers, whose base weight
    is stored in x out. llama.cpp's GPT-2 converter transposes those layers' weights, and with them the pair:
    (A, B) became (B^T, A^T), so blk.0.attn_qkv.weight.lora_a came out [192, 4] against a [64, 192] weight and
    llama.cpp crashed applying it. Handing the converter (B^T, A^T) makes its transpose give back (A, B).
    `conv1d` names the base modules that are Conv1D (transformer.h.0.attn.c_attn, ...).
    """
    out = dict(state)
    for key in state:
        name = key.removeprefix(PEFT_PREFIX)
        for part, other in (("lora_A", "lora_B"), ("lora_B", "lora_A")):
            module, marker, _ = name.partition(f".{part}.")
            if marker and module in conv1d:
                out[key] = state[key.replace(f".{part}.", f".{other}.")].T.contiguous()
    return out


# --- reading back -------------------------------------------------------------------------------------


def read_gguf(path: Path, arrays: bool = False) -> dict[str, Any]:
    """A GGUF file's metadata (key -> value; long arrays as their length unless `arrays`) and tensors."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    metadata: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        long = isinstance(value, list) and len(value) > 64 and not arrays
        metadata[key] = {"length": len(value)} if long else value
    tensors = {
        t.name: {"shape": [int(x) for x in t.shape], "type": t.tensor_type.name} for t in reader.tensors
    }
    return {"metadata": metadata, "tensors": tensors}


def lora_deltas_from_gguf(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Rebuild each weight update scale * B @ A from a LoRA GGUF, in Hugging Face row order (torch)."""
    import gguf
    import torch

    reader = gguf.GGUFReader(str(path))
    alpha = float(reader.fields[gguf.Keys.Adapter.LORA_ALPHA].contents())
    data = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    names = tensor_name_map(int(config["num_hidden_layers"]))
    deltas = {}
    for hf_name in _llama_linear_names(config):
        name = gguf_tensor_name(hf_name, names)
        if f"{name}.lora_a" not in data:
            continue
        a, b = data[f"{name}.lora_a"], data[f"{name}.lora_b"]
        heads = rotary_heads(hf_name, config)
        if heads is not None:
            b = unpermute_rows(b, heads)
        deltas[hf_name] = torch.from_numpy(np.ascontiguousarray((alpha / a.shape[0]) * (b @ a)))
    return deltas


def _llama_linear_names(config: dict[str, Any]) -> list[str]:
    """Hugging Face names of every linear weight in a llama model's blocks."""
    parts = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    return [f"model.layers.{i}.{p}.weight" for i in range(int(config["num_hidden_layers"])) for p in parts]
