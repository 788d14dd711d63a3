"""GGUF files for llama.cpp and Ollama: a LoRA adapter, a whole llama-family model with tokenizer, readers.

Layouts follow llama.cpp: tensor names from gguf's TensorNameMap (`blk.N.attn_q.weight`), Q and K rows
reordered for llama.cpp's interleaved rotary embedding, 1-D tensors kept in f32, LoRA pairs stored as
`<name>.lora_a` (rank x in) and `<name>.lora_b` (out x rank) with `adapter.lora.alpha` as the scale numerator.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from finetune.errors import ModelError

# Hugging Face architectures that llama.cpp runs as `llama` (same tensors, same rotary layout).
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
GGUF_DTYPES = ("fp32", "fp16")
GGUF_SUFFIX = {"fp32": "f32", "fp16": "f16"}
PEFT_PREFIX = "base_model.model."


# --- names and the rotary permutation (pure) ------------------------------------------------------


def check_llama(config: dict[str, Any]) -> None:
    """Refuse architectures this writer does not lay out (llama.cpp's own converter handles the rest)."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in LLAMA_ARCHITECTURES:
        raise ModelError(
            f"config.json architectures: GGUF export supports {', '.join(LLAMA_ARCHITECTURES)}, got {arch}; "
            "export --merge as safetensors and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ModelError(f"config.json rope type '{kind}': GGUF export supports default and linear rope only")


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


# --- writing ----------------------------------------------------------------------------------------


def _as_numpy(tensor: Any, dtype: str) -> np.ndarray:
    """A torch tensor as a contiguous numpy array in the GGUF storage dtype."""
    import torch

    target = torch.float16 if dtype == "fp16" else torch.float32
    return tensor.detach().to("cpu", target).contiguous().numpy()


def _file_type(dtype: str) -> int:
    """gguf's LlamaFileType for a storage dtype."""
    import gguf

    return int(gguf.LlamaFileType.MOSTLY_F16 if dtype == "fp16" else gguf.LlamaFileType.ALL_F32)


def _write(writer: Any, path: Path) -> None:
    """Write a filled GGUFWriter to a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)


def _general(writer: Any, meta: dict[str, Any]) -> None:
    """general.* keys: name, licence and the base model it came from."""
    writer.add_name(meta.get("name") or "model")
    if meta.get("license"):
        writer.add_license(meta["license"])
    if meta.get("base_model"):
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, meta["base_model"])
        if meta["base_model"].count("/") == 1 and not meta["base_model"].startswith(("/", ".")):
            writer.add_base_model_repo_url(0, f"https://huggingface.co/{meta['base_model']}")


def write_lora_gguf(
    path: Path,
    state: dict[str, Any],
    lora_config: dict[str, Any],
    config: dict[str, Any],
    dtype: str,
    meta: dict[str, Any],
) -> list[str]:
    """Write a peft LoRA adapter as a llama.cpp LoRA GGUF; returns the tensor names written."""
    import gguf

    check_llama(config)
    alpha = lora_alpha_for_gguf(lora_config)
    names = tensor_name_map(int(config["num_hidden_layers"]))
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_file_type(_file_type(dtype))
    _general(writer, meta)
    written = []
    for hf_name, (lora_a, lora_b) in lora_pairs(state).items():
        name = gguf_tensor_name(hf_name, names)
        a, b = _as_numpy(lora_a, dtype), _as_numpy(lora_b, dtype)
        heads = rotary_heads(hf_name, config)
        if heads is not None:
            b = np.ascontiguousarray(permute_rows(b, heads))
        # numpy (rank, in) and (out, rank) are ggml ne (in, rank) and (rank, out): what llama.cpp checks.
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
        written += [f"{name}.lora_a", f"{name}.lora_b"]
    _write(writer, path)
    return written


def _llama_hparams(writer: Any, config: dict[str, Any], dtype: str) -> None:
    """llama.* hyperparameters as llama.cpp's llama loader reads them."""
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    writer.add_context_length(int(config.get("max_position_embeddings", 4096)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_file_type(_file_type(dtype))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != int(config["hidden_size"]) // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


def token_table(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types for a byte-level BPE tokenizer, padded to vocab_size."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            tokens.append(by_id[i])
            looks_special = by_id[i].startswith("<|") and by_id[i].endswith("|>")
            kind = (
                gguf.TokenType.CONTROL if added[i].special or looks_special else gguf.TokenType.USER_DEFINED
            )
            types.append(int(kind))
        else:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def _tokenizer_kv(writer: Any, tokenizer_dir: Path, config: dict[str, Any], pre: str) -> None:
    """tokenizer.ggml.* keys: gpt2 (byte-level BPE) model, tokens, types, merges, special ids, template."""
    import gguf
    from transformers import AutoTokenizer

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or (spec.get("decoder") or {}).get("type") != "ByteLevel"
    ):
        raise ModelError(
            f"{tokenizer_dir}/tokenizer.json: GGUF export supports byte-level BPE (gpt2-style) "
            "tokenizers only; convert the merged folder with llama.cpp's convert_hf_to_gguf.py"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tokens, types = token_table(tokenizer, int(config["vocab_size"]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    prefix = getattr(tokenizer, "add_prefix_space", None)
    writer.add_add_space_prefix(bool(prefix) if isinstance(prefix, bool) else False)
    special = gguf.SpecialVocab(str(tokenizer_dir), load_merges=True, n_vocab=len(tokens))
    if "bos" not in special.add_special_token:
        # Chat templates add their own markers; without an explicit rule llama.cpp would prepend BOS.
        special.add_special_token["bos"] = bool(getattr(tokenizer, "add_bos_token", False))
    special.add_to_gguf(writer, quiet=True)


def write_model_gguf(
    path: Path,
    state: dict[str, Any],
    config: dict[str, Any],
    tokenizer_dir: Path,
    dtype: str,
    meta: dict[str, Any],
    pre: str = "default",
) -> list[str]:
    """Write a whole llama-family model (weights in f16 or f32, norms in f32) with its tokenizer as GGUF."""
    import gguf

    check_llama(config)
    names = tensor_name_map(int(config["num_hidden_layers"]))
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    _general(writer, meta)
    _llama_hparams(writer, config, dtype)
    _tokenizer_kv(writer, tokenizer_dir, config, pre)
    tied = bool(config.get("tie_word_embeddings"))
    written = []
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the output reuses token_embd
        name = gguf_tensor_name(hf_name, names)
        data = _as_numpy(tensor, dtype if tensor.dim() > 1 else "fp32")  # llama.cpp keeps norms in f32
        heads = rotary_heads(hf_name, config)
        if heads is not None:
            data = np.ascontiguousarray(permute_rows(data, heads))
        writer.add_tensor(name, data)
        written.append(name)
    _write(writer, path)
    return written


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


# --- Ollama ---------------------------------------------------------------------------------------------

_CHATML_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
_PROBE = {"system": "SYSTEM-PROBE-7", "user": "USER-PROBE-7", "assistant": "ASSISTANT-PROBE-7"}


def chatml_default_system(render: Any) -> tuple[bool, str | None]:
    """Whether a chat template renders ChatML, and the system text it adds when none is given.

    `render(messages)` renders a conversation with the generation prompt. The template is judged by what
    it produces for probe conversations, not by parsing its Jinja.
    """

    def turn(role: str, content: str) -> str:
        return _CHATML_TURN.format(role=role, content=content)

    p = _PROBE
    opening = "<|im_start|>assistant\n"
    try:
        with_system = render(
            [{"role": "system", "content": p["system"]}, {"role": "user", "content": p["user"]}]
        )
        multi = render(
            [
                {"role": "system", "content": p["system"]},
                {"role": "user", "content": p["user"]},
                {"role": "assistant", "content": p["assistant"]},
                {"role": "user", "content": p["user"]},
            ]
        )
        bare = render([{"role": "user", "content": p["user"]}])
    except Exception:  # templates may raise on roles they do not support: then it is not plain ChatML
        return False, None
    if with_system != turn("system", p["system"]) + turn("user", p["user"]) + opening:
        return False, None
    if (
        multi
        != turn("system", p["system"])
        + turn("user", p["user"])
        + turn("assistant", p["assistant"])
        + turn("user", p["user"])
        + opening
    ):
        return False, None
    tail = turn("user", p["user"]) + opening
    if not bare.endswith(tail):
        return False, None
    prefix = bare[: -len(tail)]
    if not prefix:
        return True, None
    head, end = "<|im_start|>system\n", "<|im_end|>\n"
    if prefix.startswith(head) and prefix.endswith(end):
        return True, prefix[len(head) : -len(end)]
    return False, None


def ollama_template(default_system: str | None) -> str:
    """A ChatML chat template in Ollama's Go-template form (system from .System, then the turns)."""
    # No "{{-" trim markers: every newline in the text below is part of the ChatML format.
    fallback = f"{{{{ else }}}}<|im_start|>system\n{default_system}<|im_end|>\n" if default_system else ""
    return (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
        f"{fallback}{{{{ end }}}}"
        '{{ range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
        "{{ end }}{{ end }}<|im_start|>assistant\n"
    )


def _quoted(text: str) -> str:
    """A Modelfile triple-quoted value (which cannot itself hold three double quotes)."""
    return '"""' + text.replace('"""', "'''") + '"""'


def modelfile_text(
    tokenizer: Any, model_file: str, adapter_file: str | None, system_prompt: str | None
) -> str:
    """An Ollama Modelfile: FROM (and ADAPTER), TEMPLATE for ChatML templates, SYSTEM, stop tokens."""

    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    lines = [f"FROM ./{model_file}"]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    is_chatml, default_system = chatml_default_system(render)
    if is_chatml:
        lines.append(f"TEMPLATE {_quoted(ollama_template(default_system))}")
    else:
        lines.append(
            "# TEMPLATE omitted: the chat template is not ChatML; Ollama uses the one inside the GGUF"
        )
    if system_prompt:
        lines.append(f"SYSTEM {_quoted(system_prompt)}")
    stops = ["<|im_end|>"] if is_chatml else []
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"
