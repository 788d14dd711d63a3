"""A reply cut by max_new_tokens inside a character's bytes ends on the last whole character, not on U+FFFD."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_a_reply_cut_inside_a_character_has_no_replacement_character():
    from finetune.chat import load_target
    from finetune.inference import generate

    model, tokenizer, _ = load_target("bundled:smollm2-135m-instruct")
    asked = [[{"role": "user", "content": "日本の首都はどこですか？"}]]
    texts = [generate(model, tokenizer, asked, max_new_tokens=n)[0].text for n in range(2, 9)]
    assert all(texts), texts
    assert not any("\ufffd" in text for text in texts), texts
    # each cut keeps what the longer ones begin with
    for short, long in zip(texts, texts[1:]):
        assert long.startswith(short), (short, long)
