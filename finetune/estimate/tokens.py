"""The dataset's tokens: how many a run trains on, and how batches pad them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import DataError, ModelError
from finetune.estimate.assumptions import Assumptions, assumptions

if TYPE_CHECKING:
    from finetune.data import Conversation
    from finetune.recipe import Recipe


@dataclass
class Tokens:
    """How many tokens a run trains on, per epoch, and how they were counted."""

    rows_train: int
    rows_eval: int
    lengths: list[int]  # per training row, truncated to max_length (estimated rows repeat a sample)
    eval_lengths: list[int]
    method: str  # "tokenizer", "characters" (no tokenizer on disk) or "sampled" (large file)
    truncated_rows: int = 0
    prompt_lengths: list[int] = field(default_factory=list)  # tokens before the first trained token

    @property
    def per_epoch(self) -> int:
        """Training tokens per epoch (what hosted APIs bill per epoch)."""
        return sum(self.lengths)

    def to_dict(self) -> dict[str, Any]:
        """JSON view without the per-row lengths."""
        return {"rows_train": self.rows_train, "rows_eval": self.rows_eval, "per_epoch": self.per_epoch,
                "eval_tokens": sum(self.eval_lengths), "method": self.method,
                "truncated_rows": self.truncated_rows, "longest": max(self.lengths, default=0)}


def _char_tokens(messages: list[dict[str, Any]], a: Assumptions) -> int:
    """Tokens of a conversation estimated from its characters (ASCII ~4 per token, other scripts ~1)."""
    if not messages:
        return 0
    ascii_chars = other = 0
    for message in messages:
        text = str(message.get("content", ""))
        n_ascii = sum(1 for ch in text if ord(ch) < 128)
        ascii_chars += n_ascii
        other += len(text) - n_ascii
    estimate = ascii_chars / a.chars_per_token_ascii + other / a.chars_per_token_other
    return int(estimate + a.template_tokens_per_message * len(messages)) + 1


def _prompt_part(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages before the first assistant reply (what the loss never sees)."""
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            return messages[:index]
    return messages


def _tokenizer_for(recipe: Recipe) -> Any | None:
    """The recipe's tokenizer if it is on disk (bundled, local folder or hub cache); None otherwise."""
    spec = recipe.base_model
    try:
        if spec.startswith("bundled:") or Path(spec).expanduser().exists():
            from finetune.models import load_tokenizer

            return load_tokenizer(recipe)
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec, "tokenizer_config.json"), str):
            return None
        from transformers import AutoTokenizer

        from finetune.models import named_chat_template

        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True,
                                                  trust_remote_code=recipe.trust_remote_code)
        if recipe.tokenizer.chat_template or not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = named_chat_template(recipe.tokenizer.chat_template or "chatml")
        return tokenizer
    except (OSError, ValueError, ModelError, ImportError):
        return None


def _dataset_path(recipe: Recipe, recipe_dir: Path | None) -> Path:
    """The dataset file: as written, else relative to the recipe's folder."""
    path = Path(recipe.dataset.path).expanduser()
    beside = recipe_dir / path if recipe_dir is not None and not path.is_absolute() else None
    if not path.exists() and beside is not None and beside.exists():
        return beside
    if not path.is_file():
        raise DataError(f"{recipe.dataset.path}: dataset file not found (dataset.path)")
    return path


@dataclass(frozen=True)
class _Row:
    """One row as training sees it: tokens kept, tokens before the first label, cut by max_length."""

    length: int
    prompt: int
    truncated: bool


def _tokenized_rows(tokenizer: Any, conversations: list[Conversation], max_len: int) -> list[_Row]:
    """The rows training keeps, counted with training's own tokenisation (finetune.data)."""
    from finetune.data import column, tokenize_rows

    if not conversations:
        return []  # an empty dataset has no columns to read
    # training's own tokenised rows (and cache): lengths cut at max_length, the uncut length, the first label
    dataset = tokenize_rows(tokenizer, conversations, max_len)
    columns = (column(dataset, name).tolist() for name in ("length", "full_length", "prompt_length"))
    rows = []
    for length, full, prompt in zip(*columns, strict=True):
        if prompt < max_len:  # training drops a row whose replies max_length cuts off entirely
            rows.append(_Row(length, prompt, full > max_len))
    return rows


def _character_rows(conversations: list[Conversation], max_len: int, a: Assumptions) -> list[_Row]:
    """Rows estimated from their characters (no tokenizer on disk), dropped and cut as training would."""
    rows = []
    for conversation in conversations:
        length = _char_tokens(conversation.messages, a)
        prompt = _char_tokens(_prompt_part(conversation.messages), a)
        if prompt < max_len:
            rows.append(_Row(min(length, max_len), prompt, length > max_len))
    return rows


def count_tokens(recipe: Recipe, recipe_dir: Path | None = None, a: Assumptions | None = None,
                 conversations: list[Conversation] | None = None) -> Tokens:
    """Tokens per training row as training counts them (finetune.data's tokenisation), or from the text.

    `conversations` are the dataset's rows when the caller has read them already (`finetune train`).
    Only the rows are counted, as training sees them: the recipe's system_prompt is for inference.
    """
    from finetune.data import load_conversations, split_train_eval

    a = a or assumptions()
    path = _dataset_path(recipe, recipe_dir)
    max_len = recipe.dataset.max_length
    if path.stat().st_size / 1e6 > a.large_dataset_mb:
        return _sampled_tokens(recipe, path, a)
    if conversations is None:
        conversations = load_conversations(path, recipe.dataset.format)
    train, held_out = split_train_eval(conversations, recipe.dataset.eval_fraction, recipe.training.seed)
    tokenizer = _tokenizer_for(recipe)
    if tokenizer is not None:
        rows, eval_rows = _tokenized_rows(tokenizer, train, max_len), _tokenized_rows(tokenizer, held_out, max_len)
    else:
        rows, eval_rows = _character_rows(train, max_len, a), _character_rows(held_out, max_len, a)
    if train and not rows:
        raise DataError(f"{path}: no training row keeps any reply within dataset.max_length={max_len}; "
                        "raise max_length")
    return Tokens(
        rows_train=len(rows),
        rows_eval=len(eval_rows),
        lengths=[r.length for r in rows],
        eval_lengths=[r.length for r in eval_rows],
        method="tokenizer" if tokenizer is not None else "characters",
        truncated_rows=sum(1 for r in rows if r.truncated),
        prompt_lengths=[r.prompt for r in rows],
    )


def _sampled_tokens(recipe: Recipe, path: Path, a: Assumptions, sample: int = 2000) -> Tokens:
    """A large file: count its rows, estimate tokens from the characters of a sample of them."""
    rows = 0
    lengths: list[int] = []
    prompts: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            rows += 1
            if len(lengths) < sample:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                messages = row.get("messages") if isinstance(row, dict) else None
                if not isinstance(messages, list):
                    values = [str(v) for v in row.values()] if isinstance(row, dict) else [str(row)]
                    messages = [{"role": "user", "content": " ".join(values[:-1])},
                                {"role": "assistant", "content": values[-1] if values else ""}]
                lengths.append(_char_tokens(messages, a))
                prompts.append(_char_tokens(_prompt_part(messages), a))
    if not lengths:
        raise DataError(f"{path}: no readable JSON rows")
    n_eval = int(round(rows * recipe.dataset.eval_fraction))
    n_train = rows - n_eval
    max_len = recipe.dataset.max_length
    # Repeat the sample's lengths so padding and truncation follow its distribution.
    train = [min(lengths[i % len(lengths)], max_len) for i in range(n_train)]
    held = [min(lengths[i % len(lengths)], max_len) for i in range(n_eval)]
    heads = [min(prompts[i % len(prompts)], max_len) for i in range(n_train)]
    truncated = int(sum(1 for n in lengths if n > max_len) * n_train / len(lengths))
    return Tokens(n_train, n_eval, train, held, "sampled", truncated, heads)


def _batches(tokens: Tokens, batch: int, group_by_length: bool, seed: int) -> list[list[tuple[int, int]]]:
    """Training rows as (length, prompt length) grouped into micro-batches the way the sampler orders them."""
    prompts = tokens.prompt_lengths
    if len(prompts) != len(tokens.lengths):
        prompts = [0] * len(tokens.lengths)
    pairs = list(zip(tokens.lengths, prompts, strict=True))
    if group_by_length:
        pairs.sort(key=lambda p: -p[0])  # transformers' length-grouped sampler: similar lengths together
    else:
        random.Random(seed).shuffle(pairs)
    return [pairs[i:i + batch] for i in range(0, len(pairs), batch)]


def batch_widths(tokens: Tokens, batch: int, group_by_length: bool, seed: int) -> list[int]:
    """The padded width (longest row) of each micro-batch of an epoch, in the sampler's order."""
    return [max(n for n, _ in rows) for rows in _batches(tokens, batch, group_by_length, seed)]


def padded_tokens(lengths: list[int], batch: int, group_by_length: bool, seed: int) -> tuple[int, int]:
    """(tokens the model computes on, longest row) when rows are right-padded to their batch's longest."""
    batches = _batches(Tokens(len(lengths), 0, lengths, [], ""), batch, group_by_length, seed)
    return sum(max(n for n, _ in b) * len(b) for b in batches), max(lengths, default=0)


def logits_fractions(tokens: Tokens, batch: int, group_by_length: bool, seed: int) -> tuple[float, float]:
    """Share of positions whose logits finetune.train computes: (in the longest batch, over all tokens)."""
    batches = _batches(tokens, batch, group_by_length, seed)
    if not batches:
        return 1.0, 1.0
    kept_total = width_total = 0
    peak, peak_width = 1.0, -1
    for rows in batches:
        width = max(n for n, _ in rows)
        # Logits are kept from the earliest label position in the batch to its end.
        start = min(min(p, n - 1) for n, p in rows)
        kept = max(1, width - max(start, 0))
        kept_total += kept * len(rows)
        width_total += width * len(rows)
        if width > peak_width:
            peak, peak_width = kept / width, width
    return peak, kept_total / max(width_total, 1)
