"""Arrow-backed, cached tokenisation: the same tokens as the row-by-row path, tokenised once per key."""

from pathlib import Path

import pytest

from finetune.data import (
    IGNORE_INDEX,
    end_of_turn_token,
    load_conversations,
    tokenize_conversation,
    tokenize_conversations,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundled_tokenizer(bundled_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_dir)


@pytest.mark.parametrize("max_length", [64, 256])
def test_dataset_tokens_equal_the_row_by_row_tokens_on_the_pirate_data(bundled_tokenizer, max_length):
    path = ROOT / "datasets" / "pirate.jsonl"
    conversations = load_conversations(path)
    dataset = tokenize_conversations(bundled_tokenizer, conversations, max_length)
    terminator = end_of_turn_token(bundled_tokenizer)
    expected = [tokenize_conversation(bundled_tokenizer, c.messages, max_length, terminator) for c in conversations]
    expected = [row for row in expected if row["loss_tokens"] > 0]  # rows cut to no labels are dropped
    assert len(dataset) == len(expected) > 300
    for got, want in zip(dataset, expected, strict=True):
        assert got["input_ids"] == want["input_ids"]
        assert got["labels"] == want["labels"]
    assert any(label == IGNORE_INDEX for label in dataset[0]["labels"])  # the prompt is masked
