"""Architectures llama.cpp's converter cannot take are refused in one line before any work; the others pass."""

from __future__ import annotations

import pytest

from finetune import llama_cpp
from finetune.errors import ModelError


def test_unknown_architecture_is_refused_and_known_ones_pass() -> None:
    if llama_cpp.source_dir(download=False) is None:
        pytest.skip("llama.cpp sources not cached (make llama-cpp)")
    with pytest.raises(ModelError, match=r"GPTNeoXJapaneseForCausalLM .*no such architecture.*supports llama"):
        llama_cpp.require_architecture("GPTNeoXJapaneseForCausalLM", "gpt_neox_japanese")
    for architecture, model_type in (("LlamaForCausalLM", "llama"), ("Gemma2ForCausalLM", "gemma2"),
                                     ("Phi3ForCausalLM", "phi3"), ("Qwen2ForCausalLM", "qwen2"),
                                     ("MistralForCausalLM", "mistral"), ("GPTNeoXForCausalLM", "gpt_neox"),
                                     ("Gemma3ForCausalLM", "gemma3_text")):
        llama_cpp.require_architecture(architecture, model_type)
