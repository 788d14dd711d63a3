"""llama.cpp's converter gets back the config keys transformers 5 moved (GPT-NeoX's rotary_pct), and only those."""

from __future__ import annotations

import pytest

from finetune import llama_cpp
from finetune.llama_cpp_convert import restore_moved_keys


def test_gpt_neox_rotary_keys_come_back_from_rope_parameters() -> None:
    from transformers import GPTNeoXConfig

    config = GPTNeoXConfig(rotary_pct=0.5, rotary_emb_base=20000).to_dict()
    assert "rotary_pct" not in config  # what broke llama.cpp's converter: transformers 5 moved it
    restored = restore_moved_keys(config)
    assert restored["rotary_pct"] == 0.5 and restored["rotary_emb_base"] == 20000
    assert restored["rope_parameters"] == config["rope_parameters"]


def test_other_configs_and_present_keys_are_left_alone() -> None:
    llama = {"model_type": "llama", "rope_parameters": {"partial_rotary_factor": 0.5, "rope_theta": 1.0}}
    assert restore_moved_keys(llama) == llama
    neox = {"model_type": "gpt_neox", "rotary_pct": 0.25, "rope_parameters": {"partial_rotary_factor": 0.5}}
    assert restore_moved_keys(neox)["rotary_pct"] == 0.25


def test_gpt_neox_converts_with_its_rotary_fraction(tmp_path, bundled_dir) -> None:
    # A real GPT-NeoX folder through llama.cpp's own converter: rotary_pct 0.5 of 16-wide heads = 8 rotary dims.
    if llama_cpp.source_dir(download=False) is None:
        pytest.skip("llama.cpp sources not cached (make llama-cpp)")
    from finetune.gguf_export import read_gguf
    from tests.conftest import make_tiny_model

    model = make_tiny_model(tmp_path / "neox", "gpt_neox", bundled_dir, rotary_pct=0.5)
    llama_cpp.convert_model(model, tmp_path / "neox.gguf", "f32")
    metadata = read_gguf(tmp_path / "neox.gguf")["metadata"]
    assert metadata["general.architecture"] == "gptneox"
    assert metadata["gptneox.rope.dimension_count"] == 8
