"""models.gguf_read_once: one parse of a GGUF file and one tensor-name map while transformers loads it."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from finetune.models import bundled_model_path, gguf_read_once


def _tiny_gguf(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_string("general.name", "tiny")
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_one_reader_per_file_inside_and_fresh_ones_outside(tmp_path) -> None:
    path = _tiny_gguf(tmp_path / "tiny.gguf")
    original = gguf.GGUFReader
    with gguf_read_once():
        first = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(path) is first  # the same file by another spelling of its path
        assert isinstance(first, original)
        assert first.fields["general.name"].contents() == "tiny"
        assert np.array_equal(np.array(first.tensors[0].data).reshape(3, 4),
                              np.arange(12, dtype=np.float32).reshape(3, 4))
        assert gguf.GGUFReader(str(path), "c") is not first  # another mode is another reader
        other = _tiny_gguf(tmp_path / "other.gguf")
        assert gguf.GGUFReader(str(other)) is not first
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(str(path)) is not gguf.GGUFReader(str(path))


def test_the_tensor_name_map_is_built_once_inside(tmp_path) -> None:
    original = gguf.get_tensor_name_map
    with gguf_read_once():
        shared = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is shared
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3) is not shared
        assert shared.get_name("model.layers.1.self_attn.q_proj.weight",
                               try_suffixes=(".weight",)) == "blk.1.attn_q.weight"
    assert gguf.get_tensor_name_map is original
    assert original(gguf.MODEL_ARCH.LLAMA, 2) is not original(gguf.MODEL_ARCH.LLAMA, 2)


def test_gguf_is_restored_when_loading_fails(tmp_path) -> None:
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(RuntimeError), gguf_read_once():
        raise RuntimeError("a load that fails")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)


def test_the_bundled_conversion_parses_its_file_once(tmp_path, monkeypatch, capsys) -> None:
    # transformers reads it for the tokenizer, the config and the weights: three parses without the context.
    parses = []
    build = gguf.GGUFReader._build_fields
    monkeypatch.setattr(gguf.GGUFReader, "_build_fields",
                        lambda self, *args: parses.append(1) or build(self, *args))
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path))
    folder = bundled_model_path("smollm2-135m-instruct")
    assert len(parses) == 1
    assert folder == tmp_path / "models" / "smollm2-135m-instruct" and (folder / "model.safetensors").is_file()
    # Whatever command comes first pays the conversion: it says what the progress bar under it is.
    assert f"bundled:smollm2-135m-instruct: converting the bundled GGUF into a model folder, once for this " \
           f"machine ({folder})" in capsys.readouterr().err
