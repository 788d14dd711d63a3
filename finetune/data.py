"""Datasets: JSONL formats, validation with line numbers, chat-template tokenisation and loss masks."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FORMATS = ("messages", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20
IGNORE_INDEX = -100


@dataclass
class Conversation:
    """One training row as chat messages, with the line it came from."""

    messages: list[dict[str, Any]]
    line: int


@dataclass
class DataReport:
    """What reading a file found: its format, good rows and `FILE:LINE: problem` lines."""

    path: Path
    format: str | None
    conversations: list[Conversation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def detect_format(row: dict[str, Any]) -> str | None:
    """Which dataset format one JSON object is in (None if none)."""
    if "messages" in row:
        return "messages"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    return None


def _messages_from(row: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    """Convert a row of any format to chat messages, raising ValueError with what is wrong."""
    if fmt == "alpaca":
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"'{key}' must be a string")
        if "input" in row and row["input"] is not None and not isinstance(row["input"], str):
            raise ValueError("'input' must be a string")
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    elif fmt == "prompt_completion":
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"'{key}' must be a string")
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    else:
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {index} must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {index}: unknown role {role!r} (expected system, user or assistant)")
        if not isinstance(content, str):
            raise ValueError(f"message {index}: 'content' must be a string, got {type(content).__name__}")
        if role == "assistant" and not content.strip():
            raise ValueError(f"message {index}: empty assistant reply")
        if message.get("weight", 1) not in (0, 1):
            raise ValueError(f"message {index}: 'weight' must be 0 or 1")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant turn (nothing to learn from)")
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages):
        raise ValueError("every assistant turn has weight 0 (nothing to learn from)")
    return [{k: v for k, v in m.items() if k in ("role", "content", "weight")} for m in messages]


def read_dataset(path: str | Path, fmt: str = "auto") -> DataReport:
    """Read and validate a JSONL dataset; problems are collected as `FILE:LINE: what is wrong`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    raw = path.read_bytes()
    report = DataReport(path=path, format=None if fmt == "auto" else fmt)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.problems.append(f"{path}:{number}: not valid UTF-8 (byte {exc.start})")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            report.problems.append(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(row, dict):
            report.problems.append(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            continue
        row_fmt = detect_format(row)
        if row_fmt is None:
            report.problems.append(
                f"{path}:{number}: unknown row format (expected 'messages', 'instruction'+'output', "
                "or 'prompt'+'completion')"
            )
            continue
        if report.format is None:
            report.format = row_fmt
        elif row_fmt != report.format:
            report.problems.append(f"{path}:{number}: a {row_fmt} row in a {report.format} file (mixed formats)")
            continue
        try:
            report.conversations.append(Conversation(_messages_from(row, row_fmt), number))
        except ValueError as exc:
            report.problems.append(f"{path}:{number}: {exc}")
    if not report.conversations and not report.problems:
        report.problems.append(f"{path}: the dataset is empty (no rows)")
    return report


def load_conversations(path: str | Path, fmt: str = "auto") -> list[Conversation]:
    """Read a dataset and fail on the first problem with one line (for training)."""
    report = read_dataset(path, fmt)
    if report.problems:
        more = f" ({len(report.problems) - 1} more problems: run `finetune data check {path}`)"
        raise DataError(report.problems[0] + (more if len(report.problems) > 1 else ""))
    return report.conversations


def file_sha256(path: str | Path) -> str:
    """The dataset file's hash, recorded in summaries so a result names its exact data."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_train_eval(
    conversations: list[Conversation], eval_fraction: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """Deterministic held-out split: the same recipe always holds out the same rows (compare relies on it)."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(conversations) * eval_fraction)) if len(conversations) > 1 else 0
    if eval_fraction > 0 and n_eval == 0 and len(conversations) >= 10:
        n_eval = 1
    held = set(order[:n_eval])
    train = [c for i, c in enumerate(conversations) if i not in held]
    held_out = [conversations[i] for i in sorted(held)]
    return train, held_out


def _assistant_spans(text: str, messages: list[dict[str, Any]], terminator: str | None) -> list[tuple[int, int]]:
    """Character spans of the trained assistant replies (content plus the end-of-turn marker) in `text`."""
    spans, cursor = [], 0
    for message in messages:
        start = text.find(message["content"], cursor)
        if start < 0:
            raise DataError(f"chat template dropped a {message['role']} message; cannot build the loss mask")
        end = start + len(message["content"])
        cursor = end
        if message["role"] != "assistant" or message.get("weight", 1) != 1:
            continue
        # The end-of-turn marker is learned too, or the model never learns to stop talking.
        if terminator and text.startswith(terminator, end):
            end += len(terminator)
        spans.append((start, end))
    return spans


# How a system text enters a template without a system role (Gemma): before the first user text, this apart.
SYSTEM_FOLD = "\n\n"


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold a leading system message into the first user turn (for templates that have no system role)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0], [dict(m) for m in messages[1:]]
    for message in rest:
        if message["role"] == "user":
            message["content"] = system["content"] + SYSTEM_FOLD + message["content"]
            return rest
    return rest


def render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], add_generation_prompt: bool = False
) -> str:
    """Render with the chat template; where the template refuses a system role, fold the system text in."""
    return tokenizer.apply_chat_template(
        _plain(chat_messages(tokenizer, messages)), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Only role and content (templates must not see our per-message weight)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def chat_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as the template will render them: unchanged, or with the system text folded (see docs)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    try:
        tokenizer.apply_chat_template(_plain(messages[:2]), tokenize=False)
        return messages
    except Exception as exc:  # jinja2's raise_exception: the template's own words say why
        if "system" not in str(exc).lower():
            name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
            raise DataError(f"chat template of {name}: {str(exc).splitlines()[0]}") from None
    return fold_system(messages)


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The text that closes an assistant turn in this tokenizer's chat template (e.g. <|im_end|>)."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "MARK"}]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    tail = text[text.rfind("MARK") + 4 :]
    for candidate in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", tokenizer.eos_token):
        if candidate and tail.lstrip(" ").startswith(candidate):
            return tail[: tail.find(candidate) + len(candidate)]
    return None


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    max_length: int,
    terminator: str | None = None,
) -> dict[str, Any]:
    """Render with the chat template and label only assistant tokens (the rest get -100)."""
    messages = chat_messages(tokenizer, messages)
    text = tokenizer.apply_chat_template(_plain(messages), tokenize=False)
    spans = _assistant_spans(text, messages, terminator)
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        labels = [
            tok if any(s <= a and b <= e and b > a for s, e in spans) else IGNORE_INDEX
            for tok, (a, b) in zip(ids, offsets)
        ]
    else:
        # Slow tokenizers have no offsets: find token boundaries by tokenising the text up to each span.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            a = len(tokenizer(text[:start], add_special_tokens=False)["input_ids"])
            b = len(tokenizer(text[:end], add_special_tokens=False)["input_ids"])
            labels[a:b] = ids[a:b]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    return {
        "input_ids": ids,
        "labels": labels,
        "length": len(ids),
        "loss_tokens": sum(1 for x in labels if x != IGNORE_INDEX),
        "truncated": truncated,
    }


def tokenize_conversations(
    tokenizer: PreTrainedTokenizerBase, conversations: list[Conversation], max_length: int
) -> Any:
    """Tokenise rows into a `datasets.Dataset` (input_ids, labels), dropping rows truncated to no labels."""
    from datasets import Dataset

    terminator = end_of_turn_token(tokenizer)
    rows = [tokenize_conversation(tokenizer, c.messages, max_length, terminator) for c in conversations]
    kept = [r for r in rows if r["loss_tokens"] > 0]
    return Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in kept])


def length_stats(lengths: list[int]) -> dict[str, int]:
    """p50, p95 and max of token lengths."""
    if not lengths:
        return {"p50": 0, "p95": 0, "max": 0}
    ordered = sorted(lengths)

    def pick(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]

    return {"p50": pick(0.5), "p95": pick(0.95), "max": ordered[-1]}


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch to its longest row; padding never carries loss."""
    import torch

    width = max(len(row["input_ids"]) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def trained_segments(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], max_length: int
) -> list[tuple[str, bool]]:
    """The rendered row as consecutive (text, trained) pieces: what the loss mask learns, token by token."""
    row = tokenize_conversation(tokenizer, messages, max_length, end_of_turn_token(tokenizer))
    groups: list[tuple[list[int], bool]] = []
    for token, label in zip(row["input_ids"], row["labels"]):
        trained = label != IGNORE_INDEX
        if groups and groups[-1][1] == trained:
            groups[-1][0].append(token)
        else:
            groups.append(([token], trained))
    # Decoded per group, not per token: a character split over byte-level tokens stays whole.
    return [(tokenizer.decode(ids), trained) for ids, trained in groups]


def mark_trained(pieces: list[tuple[str, bool]], start: str = "\u27e6", end: str = "\u27e7") -> str:
    """One string with the trained pieces between markers (default ⟦ ⟧)."""
    return "".join(f"{start}{text}{end}" if trained else text for text, trained in pieces)
