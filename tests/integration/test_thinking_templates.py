"""Hybrid-reasoning chat templates: the prompt at inference is the text training put before a reply.

Real templates from llama.cpp's models/templates (the llama-cpp-python source archive), rendered with the bundled
tokenizer. Qwen3's renders an empty reasoning block before a trained reply but puts it in the generation prompt
only with `enable_thinking=False`; MiniCPM5's and RWKV-World's do the opposite; QwQ's always opens a block at
inference. finetune chooses the flag per template (`data.template_kwargs`), saves it as the template's default
where it is off, and warns where no flag keeps the rule.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from finetune.data import THINKING_OFF_DEFAULT, apply_template, prompt_mismatch, saved_template, template_kwargs

llama_cpp_runtime = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (make llama-cpp)")

TURNS = [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Where is the gold?"},
         {"role": "assistant", "content": "Buried, matey."}]


@pytest.fixture(scope="module")
def tokenizer(bundled_dir):
    return AutoTokenizer.from_pretrained(bundled_dir)


def _with(tokenizer, name: str):
    from tests.zoo.families import source

    tokenizer.chat_template = (source() / "models" / "templates" / name).read_text(encoding="utf-8")
    return tokenizer


def _prompt_is_prefix(tokenizer) -> bool:
    full, head = apply_template(tokenizer, TURNS), apply_template(tokenizer, TURNS[:-1], add_generation_prompt=True)
    return full.startswith(head) and full[len(head):].lstrip().startswith(TURNS[-1]["content"])


@pytest.mark.parametrize("name, kwargs", [
    ("Qwen-Qwen3-0.6B.jinja", {"enable_thinking": False}),
    ("Qwen3.5-4B.jinja", {"enable_thinking": False}),
    ("openbmb-MiniCPM5-1B.jinja", {}),
    ("llama-cpp-rwkv-world.jinja", {}),
    ("HuggingFaceTB-SmolLM3-3B.jinja", {}),
])
def test_the_flag_is_chosen_per_template_so_the_prompt_is_what_training_put_before_the_reply(tokenizer, name,
                                                                                              kwargs):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    _with(tokenizer, name)
    assert template_kwargs(tokenizer) == kwargs
    assert _prompt_is_prefix(tokenizer) and prompt_mismatch(tokenizer) is None
    saved = saved_template(tokenizer)
    assert saved.startswith(THINKING_OFF_DEFAULT) == bool(kwargs)
    # Rendered without flags, as llama-cpp-python's chat completion renders a GGUF's template: the same prompt.
    formatter = Jinja2ChatFormatter(template=saved, eos_token=tokenizer.eos_token, bos_token=tokenizer.bos_token)
    assert formatter(messages=TURNS[:-1]).prompt == apply_template(tokenizer, TURNS[:-1], add_generation_prompt=True)


def test_a_template_that_always_opens_a_reasoning_block_is_warned_of(tokenizer):
    _with(tokenizer, "Qwen-QwQ-32B.jinja")
    assert not _prompt_is_prefix(tokenizer)
    warning = prompt_mismatch(tokenizer)
    assert warning and "<think>" in warning and "<reply>" in warning, warning


def test_a_template_without_the_flag_is_rendered_as_it_is(tokenizer, bundled_dir):
    plain = AutoTokenizer.from_pretrained(bundled_dir)
    assert template_kwargs(plain) == {} and prompt_mismatch(plain) is None and saved_template(plain) is \
        plain.chat_template


def test_a_short_earlier_reply_is_masked_where_it_is_in_a_multi_turn_qwen3_row(tokenizer):
    """Qwen3 renders an earlier turn's reply without the empty block that the thinking-off prompt ends with: the
    reply's lower bound must come from the header without it, or "a" is found in "<|im_start|>assistant"."""
    from finetune.data import _render, end_of_turn_token

    _with(tokenizer, "Qwen-Qwen3-0.6B.jinja")
    rows = [{"role": "user", "content": "Pick a or b"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "again"}, {"role": "assistant", "content": "b"}]
    text, spans = _render(tokenizer, rows, end_of_turn_token(tokenizer))
    assert [text[start:end] for start, end in spans] == ["a<|im_end|>", "b<|im_end|>"], spans
    assert text[:spans[0][0]].endswith("<|im_start|>assistant\n")
    assert text[:spans[1][0]].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
