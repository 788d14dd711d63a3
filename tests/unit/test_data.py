"""Dataset formats, validation with line numbers, and the assistant-only loss mask."""

import json

import pytest

from finetune.data import (
    IGNORE_INDEX,
    end_of_turn_token,
    load_conversations,
    read_dataset,
    split_train_eval,
    tokenize_conversation,
)
from finetune.errors import DataError


def write(tmp_path, rows, raw=None):
    path = tmp_path / "d.jsonl"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Arr!"}]}


def test_three_formats_detected(tmp_path):
    assert read_dataset(write(tmp_path, [CHAT])).format == "messages"
    alpaca = read_dataset(write(tmp_path, [{"instruction": "Add", "input": "1 2", "output": "3"}]))
    assert alpaca.format == "alpaca" and "1 2" in alpaca.conversations[0].messages[0]["content"]
    pc = read_dataset(write(tmp_path, [{"prompt": "p", "completion": "c"}]))
    assert pc.format == "prompt_completion" and pc.conversations[0].messages[1]["content"] == "c"


def test_bom_and_blank_lines_are_fine(tmp_path):
    raw = b"\xef\xbb\xbf" + json.dumps(CHAT).encode() + b"\n\n   \n" + json.dumps(CHAT).encode() + b"\n"
    report = read_dataset(write(tmp_path, None, raw))
    assert not report.problems and len(report.conversations) == 2


@pytest.mark.parametrize(
    "row, expected",
    [
        ("{not json", "invalid JSON"),
        ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}, "empty assistant"),
        ({"messages": [{"role": "wizard", "content": "q"}, {"role": "assistant", "content": "a"}]}, "unknown role"),
        ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}, "must be a string"),
        ({"text": "free text"}, "unknown row format"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, expected):
    path = write(tmp_path, [CHAT, row])
    report = read_dataset(path)
    assert report.problems and report.problems[0].startswith(f"{path}:2: ")
    assert expected in report.problems[0]
    with pytest.raises(DataError, match=f"{path}:2: "):
        load_conversations(path)


def test_non_utf8_and_mixed_formats(tmp_path):
    raw = json.dumps(CHAT).encode() + b"\n" + b'{"prompt": "\xff\xfe", "completion": "c"}\n'
    assert "not valid UTF-8" in read_dataset(write(tmp_path, None, raw)).problems[0]
    mixed = read_dataset(write(tmp_path, [CHAT, {"prompt": "p", "completion": "c"}]))
    assert mixed.problems[0].endswith(":2: a prompt_completion row in a messages file (mixed formats)"), mixed.problems
    alpaca = {"instruction": "i", "output": "o"}
    assert read_dataset(write(tmp_path, [CHAT, alpaca])).problems[0].endswith(
        ":2: an alpaca row in a messages file (mixed formats)")
    given = read_dataset(write(tmp_path, [CHAT]), "alpaca")
    assert given.problems[0].endswith(":1: a messages row but dataset.format is alpaca"), given.problems


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_conversations(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="empty"):
        load_conversations(write(tmp_path, None, b"\n\n"))


def test_split_is_deterministic_and_disjoint():
    from finetune.data import Conversation

    rows = [Conversation([{"role": "user", "content": str(i)}], i) for i in range(100)]
    train, held = split_train_eval(rows, 0.1, seed=42)
    train2, held2 = split_train_eval(rows, 0.1, seed=42)
    assert [c.line for c in held] == [c.line for c in held2] and len(held) == 10
    assert not {c.line for c in train} & {c.line for c in held} and len(train) == 90


@pytest.mark.parametrize(("n", "fraction", "said"), [(1, 0.5, True), (4, 0.1, True), (4, 0.5, False),
                                                     (10, 0.01, False), (5, 0.0, False)])
def test_a_held_out_split_that_rounding_empties_is_said(n, fraction, said):
    # A 1-row set at eval_fraction 0.5 trained with no eval loss and no word about it.
    from finetune.data import empty_split_text, split_indices

    _, held = split_indices(n, fraction, seed=0)
    text = empty_split_text(n, fraction, len(held))
    assert (text is not None) == said, (n, fraction, held, text)
    if said:
        assert text.startswith(f"no held-out rows: {n} row") and f"dataset.eval_fraction={fraction}" in text


def test_label_mask_covers_exactly_assistant_content_in_multi_turn(bundled_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Arr, blue as the sea."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Green, matey.", "weight": 0},
        {"role": "user", "content": "Last one?"},
        {"role": "assistant", "content": "Red like a parrot!"},
    ]
    terminator = end_of_turn_token(tokenizer)
    assert terminator == "<|im_end|>"
    row = tokenize_conversation(tokenizer, messages, 512, terminator)
    labelled = [tok for tok in row["labels"] if tok != IGNORE_INDEX]
    # Exactly the trained replies' tokens, each followed by its end-of-turn token, in order.
    expected = []
    for reply in ("Arr, blue as the sea.", "Red like a parrot!"):
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        expected += tokenizer(reply, add_special_tokens=False)["input_ids"] + [end]
    assert labelled == expected
    assert tokenizer.decode(labelled).count("Green") == 0
    # Labels sit where the tokens are (same positions as input_ids).
    for i, tok in enumerate(row["labels"]):
        if tok != IGNORE_INDEX:
            assert row["input_ids"][i] == tok


@pytest.mark.parametrize("reply", ["a", "t", "assistant", "im_end", "<|im_start|>"])
def test_a_reply_found_in_the_templates_own_text_is_learned_where_the_reply_is(bundled_dir, reply):
    """A short reply ("a" of "a or b?") also occurs in the assistant header before it; the mask must not
    land there (it learned the header, or nothing, and the row was dropped)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    messages = [{"role": "user", "content": "user"}, {"role": "assistant", "content": reply},
                {"role": "user", "content": "assistant"}, {"role": "assistant", "content": "a"}]
    row = tokenize_conversation(tokenizer, messages, 512, end_of_turn_token(tokenizer))
    labelled = [tok for tok in row["labels"] if tok != IGNORE_INDEX]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = []
    for text in (reply, "a"):
        expected += tokenizer(text, add_special_tokens=False)["input_ids"] + [end]
    assert labelled == expected
    # and at the replies' own positions: each learned run starts right after an assistant header
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    starts = [i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX
              and (i == 0 or row["labels"][i - 1] == IGNORE_INDEX)]
    assert len(starts) == 2
    for i in starts:
        assert row["input_ids"][i - len(header):i] == header


def test_truncation_reports_and_keeps_labels_aligned(bundled_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    messages = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "Arr " * 50}]
    row = tokenize_conversation(tokenizer, messages, 40, "<|im_end|>")
    assert row["truncated"] and len(row["input_ids"]) == len(row["labels"]) == 40


# A template without a system role, in the shape of Gemma's (written here, not copied): it raises on "system".
NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_a_template_without_system_role_gets_the_system_text_folded_into_the_first_user_turn(bundled_dir):
    from transformers import AutoTokenizer

    from finetune.data import SYSTEM_FOLD, mark_trained, render_chat, trained_segments

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    tokenizer.chat_template = NO_SYSTEM
    messages = [
        {"role": "system", "content": "Be a pirate."},
        {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": "Arr, there."},
        {"role": "user", "content": "When?"},
        {"role": "assistant", "content": "Now, matey."},
    ]
    text = render_chat(tokenizer, messages)
    assert text.startswith("<start_of_turn>user\nBe a pirate." + SYSTEM_FOLD + "Where?<end_of_turn>\n")
    assert text.count("Be a pirate.") == 1
    row = tokenize_conversation(tokenizer, messages, 512, end_of_turn_token(tokenizer))
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX])
    assert trained == "Arr, there.<end_of_turn>Now, matey.<end_of_turn>"
    marked = mark_trained(trained_segments(tokenizer, messages, 512))
    assert "⟦Arr, there.<end_of_turn>⟧" in marked and "⟦Now, matey.<end_of_turn>⟧" in marked
    assert marked.count("⟦") == 2 and "Be a pirate." in marked


def test_a_template_that_refuses_for_another_reason_is_a_one_line_data_error(bundled_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"}]
    with pytest.raises(DataError, match="chat template of .*Conversation roles must alternate"):
        tokenize_conversation(tokenizer, messages, 64)


def test_rows_read_from_arrow_are_the_rows_of_the_file(tmp_path):
    from finetune.data import Conversations

    weighted = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1", "weight": 0},
                             {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}
    path = write(tmp_path, [CHAT, "", weighted] + [CHAT] * 9)
    rows = load_conversations(path)
    assert isinstance(rows, Conversations) and len(rows) == 11
    assert rows[0].messages == CHAT["messages"] and rows[0].line == 1  # no weight key the file did not have
    assert rows[1].messages == weighted["messages"] and rows[1].line == 3  # blank line 2 skipped, weight 0 kept
    assert rows[-1].line == 12 and [c.line for c in rows[1:3]] == [3, 4] and [c.line for c in rows[2:][1:3]] == [5, 6]
    with pytest.raises(IndexError):
        rows[11]
    as_list = list(rows)
    for view, plain in zip(split_train_eval(rows, 0.3, 7), split_train_eval(as_list, 0.3, 7), strict=True):
        assert [(c.line, c.messages) for c in view] == [(c.line, c.messages) for c in plain]
        assert [view[i].line for i in range(len(view))] == [c.line for c in plain]


def test_row_lengths_reads_the_length_column(tmp_path, bundled_dir):
    from transformers import AutoTokenizer

    from finetune.data import row_lengths, tokenize_conversations

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    longer = {"messages": [{"role": "user", "content": "why " * 8}, {"role": "assistant", "content": "Arr!"}]}
    tokens = tokenize_conversations(tokenizer, load_conversations(write(tmp_path, [CHAT, longer, CHAT])), 64)
    lengths = row_lengths(tokens)
    assert lengths == [len(ids) for ids in tokens["input_ids"]] and lengths[0] == lengths[2] < lengths[1]
    assert row_lengths(tokens.remove_columns("length")) == row_lengths(tokens)


def test_length_percentiles_interpolate_between_rows():
    # Nearest-rank rounding made the median of two rows the longer one ("p50 6044  max 6044").
    from finetune.data import length_stats

    assert length_stats([6044, 3034]) == {"p50": 4539, "p95": 5894, "max": 6044}
    assert length_stats(list(range(1, 101))) == {"p50": 50, "p95": 95, "max": 100}
    assert length_stats([7]) == {"p50": 7, "p95": 7, "max": 7}
