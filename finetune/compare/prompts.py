"""Prompt sets: held-out rows, an eval file, multi-turn conversations, long prompts, multiple choice."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from finetune.data import Conversation, jsonl_lines, load_conversations, split_train_eval
from finetune.errors import DataError
from finetune.recipe import Recipe

Messages = list[dict[str, str]]


@dataclass
class SinglePrompt:
    """One prompt answered once: the turns before the first reply, and the whole row as a reference."""

    id: str
    messages: Messages  # user turns up to the first assistant reply (system messages removed)
    reference: Messages | None  # the row without system messages, for perplexity (None: no reference)


@dataclass
class MultiTurn:
    """A conversation of user turns; each arm's own replies are fed back between them."""

    id: str
    turns: list[str]


@dataclass
class LongPrompt:
    """A prompt asking for a long answer (several paragraphs)."""

    id: str
    prompt: str


@dataclass
class MCQuestion:
    """A multiple-choice question scored by option log-likelihood."""

    id: str
    question: str
    choices: list[str]
    label: int


@dataclass
class TrainPair:
    """A training prompt and the persona's reply to it (classifier data)."""

    messages: Messages
    reply: str


def content_hash(items: Any) -> str:
    """A stable short hash of a prompt set (for cache keys and the report)."""

    def plain(x: Any) -> Any:
        return asdict(x) if hasattr(x, "__dataclass_fields__") else x

    text = json.dumps([plain(i) for i in items], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(messages: list[dict[str, Any]]) -> Messages:
    """Role and content only, system messages removed (each arm decides its own system prompt)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]


def _prompt_part(messages: Messages) -> Messages:
    """The messages before the first assistant reply."""
    out: Messages = []
    for message in messages:
        if message["role"] == "assistant":
            break
        out.append(message)
    return out


def _singles(rows: list[Conversation], prefix: str, limit: int | None) -> list[SinglePrompt]:
    """Single prompts from dataset rows (rows whose first turn is not a user message are skipped)."""
    prompts = []
    for row in rows:
        plain = _plain(row.messages)
        head = _prompt_part(plain)
        if not head or head[-1]["role"] != "user":
            continue
        prompts.append(SinglePrompt(f"{prefix}-{len(prompts):03d}", head, plain))
        if limit is not None and len(prompts) >= limit:
            break
    return prompts


def heldout_split(recipe: Recipe) -> tuple[list[Conversation], list[Conversation]]:
    """The recipe's train and held-out rows, split exactly as training split them."""
    rows = load_conversations(recipe.dataset.path, recipe.dataset.format)
    return split_train_eval(rows, recipe.dataset.eval_fraction, recipe.training.seed)


def heldout_prompts(held_out: list[Conversation], limit: int | None, source: str) -> list[SinglePrompt]:
    """Held-out rows (never trained on) as single prompts with references."""
    prompts = _singles(held_out, "heldout", limit)
    if not prompts:
        raise DataError(
            f"{source}: no held-out rows (dataset.eval_fraction is 0 or too few rows); pass --eval FILE"
        )
    return prompts


def eval_file_prompts(path: Path, limit: int | None) -> list[SinglePrompt]:
    """Prompts from a dataset file in any format: user turns prompt, assistant replies are references."""
    prompts = _singles(load_conversations(path), "eval", limit)
    if not prompts:
        raise DataError(f"{path}: no row starts with a user turn")
    return prompts


def classifier_pairs(train_rows: list[Conversation], limit: int, seed: int) -> list[TrainPair]:
    """A seeded sample of training prompts with the persona's first reply to each."""
    pairs = []
    for row in train_rows:
        plain = _plain(row.messages)
        head = _prompt_part(plain)
        if head and head[-1]["role"] == "user" and len(plain) > len(head):
            pairs.append(TrainPair(head, plain[len(head)]["content"]))
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """JSON objects of a JSONL file with their line numbers; DataError naming FILE:LINE otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out = []
    for number, line in jsonl_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        out.append((number, row))
    if not out:
        raise DataError(f"{path}: the file is empty")
    return out


def load_multiturn(path: Path, turns: int | None, limit: int | None) -> list[MultiTurn]:
    """Conversations `{"id", "turns": [user turns]}`, cut to `turns` user turns each."""
    conversations = []
    for number, row in _rows(path):
        raw = row.get("turns")
        if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and t.strip() for t in raw):
            raise DataError(f"{path}:{number}: 'turns' must be a non-empty list of user messages (strings)")
        conv_id = str(row.get("id", f"conv-{len(conversations):03d}"))
        conversations.append(MultiTurn(conv_id, raw[:turns] if turns else raw))
        if limit is not None and len(conversations) >= limit:
            break
    _unique_ids(path, [c.id for c in conversations])
    return conversations


def load_long(path: Path, limit: int | None) -> list[LongPrompt]:
    """Long-answer prompts `{"id", "prompt"}`."""
    prompts = []
    for number, row in _rows(path):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f"{path}:{number}: 'prompt' must be a non-empty string")
        prompts.append(LongPrompt(str(row.get("id", f"long-{len(prompts):03d}")), row["prompt"]))
        if limit is not None and len(prompts) >= limit:
            break
    _unique_ids(path, [p.id for p in prompts])
    return prompts


def load_mc(path: Path, limit: int | None) -> list[MCQuestion]:
    """Multiple-choice questions in JCommonsenseQA shape: q_id, question, choice0..choiceN, label."""
    questions = []
    for number, row in _rows(path):
        choices = []
        while f"choice{len(choices)}" in row:
            choices.append(row[f"choice{len(choices)}"])
        if (
            not isinstance(row.get("question"), str)
            or len(choices) < 2
            or not all(isinstance(c, str) for c in choices)
        ):
            raise DataError(f"{path}:{number}: expected 'question' and string 'choice0', 'choice1', ... keys")
        label = row.get("label")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
            raise DataError(f"{path}:{number}: 'label' must be an index into the {len(choices)} choices")
        questions.append(MCQuestion(str(row.get("q_id", len(questions))), row["question"], choices, label))
        if limit is not None and len(questions) >= limit:
            break
    return questions


def _unique_ids(path: Path, ids: list[str]) -> None:
    """Prompt ids must be unique: the arena pairs replies by id."""
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise DataError(f"{path}: id {item!r} appears twice (ids must be unique)")
        seen.add(item)
