"""The bundled model's training tokenizer splits text exactly as llama.cpp splits its own GGUF (real llama.cpp)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from finetune import llama_cpp
from finetune.models import BUNDLED

pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (make llama-cpp)")


def test_bundled_tokenizer_matches_llama_cpp_on_every_check_text(bundled_dir) -> None:
    from llama_cpp import Llama

    info = BUNDLED["smollm2-135m-instruct"]
    gguf = Path(list(importlib.util.find_spec(info["package"]).submodule_search_locations)[0]) / info["file"]
    llm = Llama(str(gguf), vocab_only=True, verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    report = llama_cpp.token_check(llm, tokenizer)
    # Code spacing and long numbers: '  ', '1' in both, since digits are split before the ByteLevel step.
    assert report["passed"], report["first_mismatch"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("x  +  1")["input_ids"]) == ["x", "Ġ", "Ġ+", "ĠĠ", "1"]
