"""A model's shape, counted from its config on the meta device (never its weights)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from finetune import catalog as cat
from finetune.errors import ModelError


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
        # An alias (an instruction-tuned variant of the same network) keeps the recipe's name; the source says
        # which entry's shape it has.
        same = spec.startswith("bundled:") or spec.lower() == model_id.lower()
        shape = shape_from_config(config_from_catalogue(entry), model_id if same else spec,
                                  "catalogue" if same else f"catalogue: {model_id}'s shape", entry.licence)
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
