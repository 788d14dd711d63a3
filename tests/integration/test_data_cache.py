"""The Arrow rows and tokens are cached under FINETUNE_HOME, keyed on what decides them, and reused."""

import json
import os

import pytest

import finetune.data as data
from finetune.data import load_conversations, read_dataset, split_train_eval, tokenize_conversations, tokenize_rows
from finetune.paths import finetune_home
from finetune.recipe import parse_recipe
from tests.conftest import recipe_dict


@pytest.fixture
def tokenizer(bundled_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_dir)


@pytest.fixture
def batches(monkeypatch):
    """How many batches finetune.data tokenised (Dataset.map calls our batch function only on a cache miss)."""
    calls = []
    real = data._tokenize_batch

    def counted(batch, **kwargs):
        calls.append(len(batch["messages"]))
        return real(batch, **kwargs)

    monkeypatch.setattr(data, "_tokenize_batch", counted)
    return calls


def rows(path, n, reply="Arr, {i} it be."):
    lines = [{"messages": [{"role": "user", "content": f"question {i}"},
                           {"role": "assistant", "content": reply.format(i=i)}]} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n", encoding="utf-8")
    return path


def test_the_same_key_tokenises_once_and_each_key_part_tokenises_again(tmp_path, tokenizer, batches):
    path = rows(tmp_path / "d.jsonl", 30)
    first = tokenize_conversations(tokenizer, load_conversations(path), 64)
    assert sum(batches) == 30
    again = tokenize_conversations(tokenizer, load_conversations(path), 64)
    assert sum(batches) == 30, "the same data, tokenizer and max_length tokenised again"
    assert list(again["input_ids"]) == list(first["input_ids"]) and list(again["labels"]) == list(first["labels"])
    # Another split of the same file is a selection of the cached tokens, not a new tokenisation.
    train, held = split_train_eval(load_conversations(path), 0.2, seed=1)
    assert len(tokenize_conversations(tokenizer, train, 64)) + len(tokenize_conversations(tokenizer, held, 64)) == 30
    assert sum(batches) == 30

    tokenize_conversations(tokenizer, load_conversations(path), 16)  # max_length
    assert sum(batches) == 60
    tokenizer.chat_template += "{# another template #}"  # renders the same text, but it is another template
    tokenize_conversations(tokenizer, load_conversations(path), 64)
    assert sum(batches) == 90
    rows(path, 30, reply="Yo ho, {i}!")  # the file's content
    changed = tokenize_conversations(tokenizer, load_conversations(path), 64)
    assert sum(batches) == 120
    assert list(changed["input_ids"]) != list(first["input_ids"])


def test_caches_live_under_finetune_home_not_beside_the_data(tmp_path, tokenizer):
    folder = tmp_path / "mydata"
    folder.mkdir()
    path = rows(folder / "d.jsonl", 5)
    tokenize_rows(tokenizer, load_conversations(path), 64)
    assert os.listdir(folder) == ["d.jsonl"]
    cached = list((finetune_home() / "datasets").glob("tokens-*.arrow"))
    assert len(cached) == 1 and cached[0].stat().st_size > 0


def test_a_file_with_problems_caches_nothing_and_reports_them_every_time(tmp_path):
    path = rows(tmp_path / "d.jsonl", 3)
    path.write_text(path.read_text() + "{broken\n", encoding="utf-8")
    for _ in range(2):
        report = read_dataset(path)
        assert report.problems == [f"{path}:4: invalid JSON: Expecting property name enclosed in double quotes "
                                   "(column 2)"]
    path.write_text(path.read_text().replace("{broken\n", ""), encoding="utf-8")
    assert not read_dataset(path).problems and len(read_dataset(path).conversations) == 3


def test_tokenised_row_columns_describe_the_cut(tmp_path, tokenizer):
    path = rows(tmp_path / "d.jsonl", 4, reply="{i} " + "word " * 40)
    whole = tokenize_rows(tokenizer, load_conversations(path), 1000)
    at = whole[0]["prompt_length"] + 5  # a cut inside the reply
    cut = tokenize_rows(tokenizer, load_conversations(path), at)
    for short, full in zip(cut, whole, strict=True):
        assert short["input_ids"] == full["input_ids"][:at] and short["labels"] == full["labels"][:at]
        assert short["length"] == at and short["full_length"] == full["length"] > at and short["truncated"]
        assert not full["truncated"] and full["full_length"] == full["length"]
        assert short["prompt_length"] == full["prompt_length"] == next(
            i for i, label in enumerate(full["labels"]) if label != data.IGNORE_INDEX)
        assert short["loss_tokens"] == sum(label != data.IGNORE_INDEX for label in short["labels"]) > 0


def test_a_second_train_on_the_same_data_tokenises_nothing(tiny_llama, pirate_rows, tmp_path, batches):
    from finetune.train import train

    recipe = parse_recipe(recipe_dict(str(tiny_llama), pirate_rows, max_steps=1))
    assert train(recipe, output_dir=tmp_path / "a", say=lambda *_: None)["status"] == "completed"
    first = sum(batches)
    assert first == 48  # the whole file once, shared by the estimate, the training rows and the held-out rows
    assert train(recipe, output_dir=tmp_path / "b", say=lambda *_: None)["status"] == "completed"
    assert sum(batches) == first
