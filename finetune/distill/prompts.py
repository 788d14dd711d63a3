"""The prompts to distill: the bundled pool or the user's JSONL, deduplicated, compare's prompts removed."""

from __future__ import annotations

import hashlib
import json
import random
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.distill import DistillError
from finetune.recipe import Recipe

POOL = Path(__file__).parent / "pool" / "prompts.jsonl"
# Every prompt set compare can be pointed at (--conversations, --long, --mc); never trained on.
EVAL_SETS = Path("datasets") / "eval"

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Prompt:
    """One prompt to distill: the user turns (and any non-persona system turn) before the reply."""

    id: str
    messages: Messages
    lang: str | None = None  # the bundled pool says; user files may


def normalise(text: str) -> str:
    """The form two prompts are compared in: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def prompt_key(messages: Messages) -> str:
    """A stable id of a prompt (its normalised user turns)."""
    text = "\n".join(normalise(m["content"]) for m in messages if m["role"] == "user")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _messages_of(row: dict[str, Any], where: str) -> Messages:
    """The prompt part of one row: {"prompt": str} or {"messages": [...]} ending in a user turn."""
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise DistillError(f"{where}: 'prompt' must be a non-empty string")
        return [{"role": "user", "content": row["prompt"].strip()}]
    if "messages" in row:
        raw = row["messages"]
        ok = isinstance(raw, list) and raw and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) and m["content"].strip()
            for m in raw
        )
        if not ok:
            raise DistillError(f"{where}: 'messages' must be a list of {{role, content}} with non-empty content")
        head: Messages = []
        for m in raw:
            if m["role"] == "assistant":
                break  # only the turns before the first reply: the teacher writes the reply
            if m["role"] == "user":
                head.append({"role": "user", "content": m["content"].strip()})
        if not head:
            raise DistillError(f"{where}: 'messages' has no user turn before the first assistant reply")
        return head
    raise DistillError(f"{where}: expected a 'prompt' string or a 'messages' list, got keys {sorted(row)}")


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts of a JSONL file, in file order; DistillError naming FILE:LINE on a malformed row."""
    if not path.is_file():
        raise DistillError(f"{path}: prompts file not found")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DistillError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DistillError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DistillError(f"{where}: expected a JSON object, got {type(row).__name__}")
        messages = _messages_of(row, where)
        lang = row.get("lang") if isinstance(row.get("lang"), str) else None
        out.append(Prompt(prompt_key(messages), messages, lang))
    if not out:
        raise DistillError(f"{path}: no prompts in the file")
    return out


def reserved_texts(recipe: Recipe, output: Path) -> set[str]:
    """Normalised prompts compare evaluates on: the recipe dataset's held-out rows and datasets/eval/*."""
    texts: set[str] = set()
    dataset = Path(recipe.dataset.path)
    if dataset.is_file() and dataset.resolve() != output.resolve():
        from finetune.compare.prompts import heldout_split

        for row in heldout_split(recipe)[1]:
            texts.update(normalise(m["content"]) for m in row.messages if m["role"] == "user")
    if EVAL_SETS.is_dir():
        for path in sorted(EVAL_SETS.glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(row, dict):
                    continue
                for key in ("prompt", "question"):
                    if isinstance(row.get(key), str):
                        texts.add(normalise(row[key]))
                if isinstance(row.get("turns"), list):
                    texts.update(normalise(t) for t in row["turns"] if isinstance(t, str))
    return texts


@dataclass
class Selection:
    """The prompts chosen for distillation and what was set aside on the way."""

    prompts: list[Prompt]
    source: str
    total: int
    duplicates: int
    reserved: int


def select_prompts(
    recipe: Recipe, source: str, n: int | None, seed: int, output: Path
) -> Selection:
    """Read, deduplicate, drop compare's prompts, shuffle (seeded) and keep the first n.

    `source` is a JSONL path, "bundled" (the whole pool) or "bundled:en" / "bundled:ja" (one language).
    """
    bundled, _, lang = source.partition(":")
    path = POOL if bundled == "bundled" else Path(source)
    rows = read_prompts(path)
    if bundled == "bundled" and lang:
        rows = [p for p in rows if p.lang == lang]
        if not rows:
            raise DistillError(f"prompts {source!r}: the bundled pool has languages en and ja only")
    reserved = reserved_texts(recipe, output)
    seen: set[str] = set()
    kept: list[Prompt] = []
    duplicates = dropped = 0
    for prompt in rows:
        if prompt.id in seen:
            duplicates += 1
            continue
        seen.add(prompt.id)
        if any(normalise(m["content"]) in reserved for m in prompt.messages if m["role"] == "user"):
            dropped += 1
            continue
        kept.append(prompt)
    if not kept:
        raise DistillError(f"{path}: every prompt is a duplicate or one of compare's evaluation prompts")
    random.Random(seed).shuffle(kept)
    return Selection(kept[:n] if n else kept, str(path), len(rows), duplicates, dropped)
