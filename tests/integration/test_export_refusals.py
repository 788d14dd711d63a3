"""What cannot be exported or trained faithfully is refused in one line: an architecture llama.cpp cannot run
(exit 2, nothing written, a real trained run), a template that drops the system message from training rows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from finetune.recipe import parse_recipe
from finetune.train import train
from tests.conftest import make_tiny_model, recipe_dict

pytestmark = pytest.mark.slow


def test_gpt_neox_japanese_gguf_export_is_refused_in_one_line(tmp_path, bundled_dir, pirate_rows):
    # abeja's gpt_neox_japanese: transformers trains it, llama.cpp's convert_hf_to_gguf.py has no such class.
    model = make_tiny_model(tmp_path / "neox-ja", "gpt_neox_japanese", bundled_dir)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recipe = recipe_dict(str(model), pirate_rows, max_steps=1)
        recipe["lora"]["target_modules"] = "all-linear"
        summary = train(parse_recipe(recipe), output_dir=tmp_path / "run", say=lambda *_: None)
    finally:
        torch.set_num_threads(before)
    assert summary["status"] == "completed"
    out = tmp_path / "gguf"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "finetune", "export", str(tmp_path / "run"), "--merge",
                           "--format", "gguf", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "GPTNeoXJapaneseForCausalLM (gpt_neox_japanese)" in lines[0] and "no such architecture" in lines[0]
    assert "gemma2" in lines[0].split("supports", 1)[1] and "llama" in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("export")) == []


def test_mistral_nemo_template_rows_ending_with_a_reply_are_refused_in_one_line() -> None:
    # Mistral Nemo's real template (llama.cpp's models/templates) on Mistral v0.1's vocabulary: the system text
    # appears only before the last user turn, so a training row that ends with a reply would silently lose it.
    from transformers import AutoTokenizer

    from finetune.data import tokenize_conversation
    from finetune.errors import DataError
    from tests.zoo.families import FAMILIES, source, tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(FAMILIES["mistral"]))
    nemo = source() / "models" / "templates" / "mistralai-Mistral-Nemo-Instruct-2407.jinja"
    tokenizer.chat_template = nemo.read_text(encoding="utf-8")
    row = [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Where?"},
           {"role": "assistant", "content": "Arr, there."}]
    with pytest.raises(DataError) as refused:
        tokenize_conversation(tokenizer, row, 256, "</s>")
    message = str(refused.value)
    assert "\n" not in message and "dropped a system message" in message and "mistral-instruct" in message
    assert "last user turn" in message
