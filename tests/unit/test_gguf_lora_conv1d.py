"""GPT-2's LoRA GGUF: pairs on Conv1D layers come out of llama.cpp's converter in the base weights' orientation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune import llama_cpp
from finetune.gguf_export import conv1d_pairs_for_converter


def test_only_conv1d_pairs_are_handed_over_transposed() -> None:
    a, b = torch.arange(8.0).reshape(2, 4), torch.arange(12.0).reshape(6, 2)  # rank 2, in 4, out 6
    state = {"base_model.model.h.0.c_attn.lora_A.weight": a, "base_model.model.h.0.c_attn.lora_B.weight": b,
             "base_model.model.h.0.q_proj.lora_A.weight": a, "base_model.model.h.0.q_proj.lora_B.weight": b}
    out = conv1d_pairs_for_converter(state, {"h.0.c_attn"})
    assert torch.equal(out["base_model.model.h.0.c_attn.lora_A.weight"], b.T)
    assert torch.equal(out["base_model.model.h.0.c_attn.lora_B.weight"], a.T)
    assert out["base_model.model.h.0.q_proj.lora_A.weight"] is a
    assert out["base_model.model.h.0.q_proj.lora_B.weight"] is b


def test_gpt2_lora_gguf_matches_the_base_weights(tmp_path, bundled_dir) -> None:
    # Real converter, real peft adapter: each B @ A in the GGUF has its base weight's shape and peft's values.
    if llama_cpp.source_dir(download=False) is None:
        pytest.skip("llama.cpp sources not cached (make llama-cpp)")
    import gguf
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from tests.conftest import make_tiny_model

    base_dir = make_tiny_model(tmp_path / "gpt2", "gpt2", bundled_dir, n_ctx=512, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    state = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
    state = {k.replace(".default.", "."): v.contiguous() for k, v in state.items()}
    conv1d = {n for n, m in model.unload().named_modules() if type(m).__name__ == "Conv1D"}
    assert len(conv1d) == 8  # c_attn, c_proj, c_fc, mlp.c_proj of 2 blocks
    save_file(conv1d_pairs_for_converter(state, conv1d), str(tmp_path / "adapter" / "adapter_model.safetensors"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path":
                                                                           str(base_dir)}))
    llama_cpp.convert_model(base_dir, tmp_path / "base.gguf", "f32")
    llama_cpp.convert_lora(tmp_path / "adapter", base_dir, tmp_path / "lora.gguf", "f32")
    base = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(tmp_path / "base.gguf")).tensors}
    lora = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(tmp_path / "lora.gguf")).tensors}
    a, b = lora["blk.0.attn_qkv.weight.lora_a"], lora["blk.0.attn_qkv.weight.lora_b"]
    assert (b @ a).shape == base["blk.0.attn_qkv.weight"].shape == (192, 64)  # (out, in), as llama.cpp applies it
    peft_a = state["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"]
    peft_b = state["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert np.allclose(b @ a, (peft_b @ peft_a).numpy(), atol=1e-6)
    for name in ("attn_output", "ffn_up", "ffn_down"):
        pair = lora[f"blk.1.{name}.weight.lora_b"] @ lora[f"blk.1.{name}.weight.lora_a"]
        assert pair.shape == base[f"blk.1.{name}.weight"].shape, name
