"""Shared fixtures: a private outputs folder, the bundled model, and tiny random models for fast training."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session", autouse=True)
def _session_models(tmp_path_factory) -> Path:
    """Converted bundled models, shared by every test of this session (one conversion per session).

    Never the user's ~/.cache/finetune: a conversion left by an earlier finetune version must not decide a
    test. FINETUNE_TEST_MODELS=DIR reuses conversions across sessions (opt-in, for quick local reruns).
    """
    shared = os.environ.get("FINETUNE_TEST_MODELS")
    models = Path(shared) if shared else tmp_path_factory.mktemp("finetune-models")
    models.mkdir(parents=True, exist_ok=True)
    home = tmp_path_factory.mktemp("finetune-home")
    (home / "models").symlink_to(models, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUNE_HOME", str(home))  # session fixtures (bundled_dir) convert in here
        yield models


@pytest.fixture(autouse=True)
def _outputs(tmp_path, tmp_path_factory, monkeypatch, _session_models):
    """Every test writes runs into its own folder and has its own FINETUNE_HOME, never the user's.

    A private home means no hardware measurement, speed calibration or catalogue left by an earlier test
    decides this one; only the converted models are shared (they are the same bytes for every test).
    """
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(tmp_path / "outputs"))
    home = tmp_path_factory.mktemp("finetune-home")  # beside tmp_path, not in it: tests list their tmp_path
    (home / "models").symlink_to(_session_models, target_is_directory=True)
    monkeypatch.setenv("FINETUNE_HOME", str(home))
    yield


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The bundled SmolLM2-135M-Instruct, converted once to safetensors."""
    from finetune.models import bundled_model_path

    return bundled_model_path("smollm2-135m-instruct")


def make_tiny_model(folder: Path, model_type: str, tokenizer_dir: Path, **overrides) -> Path:
    """A randomly initialised tiny causal LM of `model_type`, saved with a real tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    sizes = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=512)
    names = {"gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, vocab_size=vocab)}
    kwargs = names.get(model_type, sizes)
    if model_type in ("llama", "mistral", "qwen2", "gemma2", "phi3"):
        kwargs["num_key_value_heads"] = 2
    if model_type == "gemma2":
        kwargs["head_dim"] = 16
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    config.pad_token_id = 2
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, bundled_dir) -> Path:
    """A 2-layer random llama with the bundled tokenizer: trains in a fraction of a second per step."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama", bundled_dir)


@pytest.fixture(scope="session")
def pirate_rows(tmp_path_factory) -> Path:
    """The first 48 rows of the shipped pirate dataset."""
    path = tmp_path_factory.mktemp("data") / "pirate48.jsonl"
    lines = (ROOT / "datasets" / "pirate.jsonl").read_text(encoding="utf-8").splitlines()[:48]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def recipe_dict(base_model: str, data: Path, **training) -> dict:
    """A small recipe as a dict (tests tweak it and validate with parse_recipe)."""
    return {
        "name": "t",
        "base_model": base_model,
        "dataset": {"path": str(data), "max_length": 64, "eval_fraction": 0.1},
        "quantization": {"bits": None},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1, "save_steps": 1000,
                     "save_minutes": None, "max_steps": 4, **training},
        "tracking": "none",
    }
