"""Datasets: JSONL formats, validation with line numbers, chat-template tokenisation and loss masks.

A file is read once per content into Arrow (`datasets`, memory-mapped from FINETUNE_HOME/datasets/, never
beside the user's file): validated rows with columns `messages` (role, content, weight or null) and `line`.
`load_conversations` hands them out as `Conversations`, a view that yields one `Conversation` at a time.

Tokenisation is `Dataset.map(batched=True)` over every row of the file, cached in
FINETUNE_HOME/datasets/tokens-KEY.arrow, KEY naming everything that decides the tokens: the file's content,
the tokenizer (vocabulary, rules, special tokens, chat template), max_length, and this module's source (the
mask and system-folding rules). A second run on the same key reads the cache and tokenises nothing.
Tokenised rows (the format the collator and packing build on):
  input_ids      token ids, cut to max_length
  labels         input_ids where the loss learns (assistant replies and their end-of-turn), else -100
  length         len(input_ids)
  full_length    tokens before the cut (data check's statistics, the estimate's count of cut rows)
  prompt_length  index of the first label in the uncut row (tokens the loss never sees before it)
  loss_tokens    labels that are not -100 (0: max_length cut every reply; training drops the row)
  truncated      full_length > max_length
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FORMATS = ("messages", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20
IGNORE_INDEX = -100
TOKEN_COLUMNS = ("input_ids", "labels", "length", "full_length", "prompt_length", "loss_tokens", "truncated")
# Any edit of this file (a mask rule, the system folding, the row format) makes new cache keys.
CODE_VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
MAP_BATCH = 256  # rows per batched tokenizer call: the Rust tokenizer encodes a batch at once


@dataclass
class Conversation:
    """One training row as chat messages, with the line it came from."""

    messages: list[dict[str, Any]]
    line: int


class Conversations(Sequence):
    """Validated rows held in Arrow (memory-mapped): indexed and iterated as Conversation, one at a time.

    `key` names the file's content (None for rows built in memory); `sha256` is the file's own hash, read
    once here for the summary and the resume check; `indices` select rows of the file (a split), so
    tokenisation can run once over the whole file and serve every split of it.
    """

    def __init__(self, rows: Any, key: str | None, indices: list[int] | None = None,
                 sha256: str | None = None) -> None:
        self.rows, self.key, self.indices, self.sha256 = rows, key, indices, sha256

    @property
    def dataset(self) -> Any:
        """The selected rows as a `datasets.Dataset` (columns messages, line)."""
        return self.rows if self.indices is None else self.rows.select(self.indices)

    def __len__(self) -> int:
        return len(self.rows) if self.indices is None else len(self.indices)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.select(list(range(len(self)))[index])
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        index %= len(self)
        if self.indices is not None:
            index = self.indices[index]
        return _conversation(self.rows[index])

    def __iter__(self) -> Iterator[Conversation]:
        for row in self.dataset:
            yield _conversation(row)

    def select(self, indices: list[int]) -> Conversations:
        """The rows at these positions (of this view), as a view of the same file."""
        chosen = [int(i) for i in indices] if self.indices is None else [self.indices[i] for i in indices]
        return Conversations(self.rows, self.key, chosen, sha256=self.sha256)


def _conversation(row: dict[str, Any]) -> Conversation:
    """A stored row as a Conversation: messages as they were read (no weight key where the file had none)."""
    return Conversation([{k: v for k, v in m.items() if v is not None} for m in row["messages"]], row["line"])


def _stored(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages in the stored shape: every key present, weight null where the file gave none."""
    return [{"role": m["role"], "content": m["content"], "weight": m.get("weight")} for m in messages]


def _row_features() -> Any:
    """Arrow types of a stored row."""
    from datasets.features import Features, List, Value

    message = {"role": Value("string"), "content": Value("string"), "weight": Value("int8")}
    return Features({"messages": List(message), "line": Value("int64")})


def _token_features() -> Any:
    """Arrow types of a tokenised row (see the module docstring)."""
    from datasets.features import Features, List, Value

    ints = {name: Value("int32") for name in ("length", "full_length", "prompt_length", "loss_tokens")}
    return Features({"input_ids": List(Value("int32")), "labels": List(Value("int32")), **ints,
                     "truncated": Value("bool")})


def cache_dir() -> Path:
    """Where datasets' Arrow files live: FINETUNE_HOME/datasets (never the folder of the user's file)."""
    from finetune.paths import finetune_home

    return finetune_home() / "datasets"


def _digest(*parts: str) -> str:
    """A short stable hash of the parts (a cache key, and a datasets fingerprint: at most 64 characters)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:32]


@contextmanager
def _quiet() -> Iterator[None]:
    """datasets' progress bars off for a moment (our own output says what happens), then as they were."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            enable_progress_bars()


@dataclass
class DataReport:
    """What reading a file found: its format, good rows and `FILE:LINE: problem` lines."""

    path: Path
    format: str | None
    conversations: Conversations | list[Conversation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    given: str | None = None  # the recipe's dataset.format, where it is not auto

    @property
    def detected(self) -> bool:
        """Whether the format was read from the file's first row (`format: auto`), not given by a recipe."""
        return self.given is None


def _article(word: str) -> str:
    """'an' before a vowel ('an alpaca row'), else 'a'."""
    return "an" if word[:1].lower() in "aeiou" else "a"


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
    """Read and validate a JSONL dataset; problems are collected as `FILE:LINE: what is wrong`.

    A valid file's rows come back as Arrow (`Conversations`), converted once per file content: the next read
    of the same bytes maps the cache and parses nothing. A file with problems caches nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    report = DataReport(path=path, format=None if fmt == "auto" else fmt, given=None if fmt == "auto" else fmt)
    rows = _arrow_rows(path, fmt, report)
    if rows is not None:
        report.conversations = rows
        report.format = report.format or _first_format(path)  # a cache hit parsed no row
    return report


def _arrow_rows(path: Path, fmt: str, report: DataReport) -> Conversations | None:
    """The file's rows in Arrow under FINETUNE_HOME, keyed by its content; None if it has problems."""
    from datasets.arrow_dataset import Dataset
    from datasets.exceptions import DatasetGenerationError

    sha256 = file_sha256(path)
    key = _digest("rows", sha256, fmt, CODE_VERSION)

    def rows() -> Iterator[dict[str, Any]]:
        yield from _scan(path, report)
        if report.problems:
            raise DataError(report.problems[0])  # datasets then discards what it wrote: nothing is cached

    try:
        with _quiet():
            dataset = Dataset.from_generator(rows, features=_row_features(), cache_dir=str(cache_dir() / "rows"),
                                             fingerprint=key)
    except DatasetGenerationError:
        if report.problems:
            return None
        raise
    return Conversations(dataset, key, sha256=sha256)


def jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 JSONL file, a leading BOM dropped.

    DataError names FILE:LINE for bytes that are not UTF-8 (decoding the whole file at once raised a bare
    UnicodeDecodeError). Lines split on newlines only: a JSON string may hold U+2028, which str.splitlines
    would cut.
    """
    with open(path, "rb") as handle:
        for number, line_bytes in enumerate(handle, start=1):
            if number == 1 and line_bytes.startswith(b"\xef\xbb\xbf"):
                line_bytes = line_bytes[3:]
            if not line_bytes.strip():
                continue
            try:
                yield number, line_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid UTF-8 (byte {exc.start})") from None


def _scan(path: Path, report: DataReport) -> Iterator[dict[str, Any]]:
    """Stream the file's lines: yield each valid row in the stored shape, add each problem to `report`."""
    good = 0
    with open(path, "rb") as handle:
        for number, line_bytes in enumerate(handle, start=1):
            if number == 1 and line_bytes.startswith(b"\xef\xbb\xbf"):
                line_bytes = line_bytes[3:]
            row = _parse(path, number, line_bytes, report)
            if row is not None:
                good += 1
                yield {"messages": _stored(row), "line": number}
    if not good and not report.problems:
        report.problems.append(f"{path}: the dataset is empty (no rows)")


def _parse(path: Path, number: int, line_bytes: bytes, report: DataReport) -> list[dict[str, Any]] | None:
    """One line's messages, or None (blank, or a problem recorded in `report`)."""
    if not line_bytes.strip():
        return None
    try:
        line = line_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.problems.append(f"{path}:{number}: not valid UTF-8 (byte {exc.start})")
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        report.problems.append(f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})")
        return None
    if not isinstance(row, dict):
        report.problems.append(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        return None
    row_fmt = detect_format(row)
    if row_fmt is None:
        report.problems.append(
            f"{path}:{number}: unknown row format (expected 'messages', 'instruction'+'output', "
            "or 'prompt'+'completion')"
        )
        return None
    if report.format is None:
        report.format = row_fmt
    elif row_fmt != report.format:
        where = (f"in {_article(report.format)} {report.format} file (mixed formats)" if report.detected
                 else f"but dataset.format is {report.format}")
        report.problems.append(f"{path}:{number}: {_article(row_fmt)} {row_fmt} row {where}")
        return None
    try:
        return _messages_from(row, row_fmt)
    except ValueError as exc:
        report.problems.append(f"{path}:{number}: {exc}")
        return None


def _first_format(path: Path) -> str | None:
    """The format of a valid file: its first row's."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                return detect_format(json.loads(line.removeprefix(b"\xef\xbb\xbf")))
    return None


def load_conversations(path: str | Path, fmt: str = "auto") -> Conversations:
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


def split_indices(n_rows: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Positions of the training and held-out rows, each in file order (the same recipe, the same split)."""
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    n_eval = int(round(n_rows * eval_fraction)) if n_rows > 1 else 0
    if eval_fraction > 0 and n_eval == 0 and n_rows >= 10:
        n_eval = 1
    held = set(order[:n_eval])
    return [i for i in range(n_rows) if i not in held], sorted(held)


def empty_split_text(n_rows: int, eval_fraction: float, held: int) -> str | None:
    """A line for a held-out split the recipe asked for but rounding left empty (no eval loss), else None."""
    if eval_fraction <= 0 or held:
        return None
    return (f"no held-out rows: {n_rows} row{'s' if n_rows != 1 else ''} at dataset.eval_fraction={eval_fraction} "
            f"hold out none, so the run reports no eval loss (10 rows or more always hold out one)")


def split_train_eval(
    conversations: Conversations | list[Conversation], eval_fraction: float, seed: int
) -> tuple[Any, Any]:
    """Deterministic held-out split: the same recipe always holds out the same rows (compare relies on it).

    Arrow rows split into two views of the same file (nothing copied); a list splits into two lists.
    """
    train, held = split_indices(len(conversations), eval_fraction, seed)
    if isinstance(conversations, Conversations):
        return conversations.select(train), conversations.select(held)
    return [conversations[i] for i in train], [conversations[i] for i in held]


def _assistant_spans(text: str, messages: list[dict[str, Any]], terminator: str | None,
                     reply_starts: dict[int, int] | None = None) -> list[tuple[int, int]]:
    """Character spans of the trained assistant replies (content plus the end-of-turn marker) in `text`.

    Each message's content is searched for after the previous one's; `reply_starts` (message index -> the
    earliest character its reply can start at) keeps a short reply from being found inside the template's
    own text before it: "a" in "<|im_start|>assistant", or "assistant" itself.
    """
    spans, cursor = [], 0
    for index, message in enumerate(messages):
        cursor = max(cursor, (reply_starts or {}).get(index, 0))
        start = text.find(message["content"], cursor)
        if start < 0:
            hint = (" (Mistral Nemo's and v0.3's templates render it only before the last user turn, so a row "
                    "ending with a reply loses it; recipe tokenizer.chat_template: mistral-instruct keeps it)"
                    if message["role"] == "system" else "")
            raise DataError(f"chat template dropped a {message['role']} message; cannot build the loss mask{hint}")
        end = start + len(message["content"])
        cursor = end
        if message["role"] != "assistant" or message.get("weight", 1) != 1:
            continue
        # The end-of-turn marker is learned too, or the model never learns to stop talking.
        if terminator and text.startswith(terminator, end):
            end += len(terminator)
        spans.append((start, end))
    return spans


def _reply_starts(tokenizer: PreTrainedTokenizerBase, text: str, messages: list[dict[str, Any]]) -> dict[int, int]:
    """Where each assistant reply begins at the earliest: after the template's text for the turns before it and
    its generation prompt (the assistant header), where that text is how the whole row begins.

    The header is tried with the template's own flags, then with the other thinking choices: Qwen3, rendered with
    thinking off, puts an empty reasoning block in the generation prompt but none before an earlier turn's reply
    (without the other header, "a" was found in "<|im_start|>assistant"). A template whose earlier turns render
    differently under every choice gives no such prefix; its replies are searched for from the previous
    message's end, as before.
    """
    own = template_kwargs(tokenizer)
    choices = [own, *(kw for kw in THINKING_CHOICES if kw != own)] if _reads_thinking(tokenizer) else [own]
    starts = {}
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index == 0:
            continue
        for kwargs in choices:
            try:
                head = tokenizer.apply_chat_template(_plain(messages[:index]), tokenize=False,
                                                     add_generation_prompt=True, **kwargs)
            except Exception:  # a template that refuses a partial conversation: no lower bound from it
                continue
            if isinstance(head, str) and text.startswith(head):
                starts[index] = len(head)
                break
    return starts


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


# Hybrid-reasoning templates read `enable_thinking`, and disagree on what it means for a trained reply. Qwen3's
# renders an empty `<think>\n\n</think>\n\n` before the last reply of a training row, but puts it in the
# generation prompt only when told that thinking is off: rendered without the flag, every prompt at inference
# stopped before the block training put in front of each reply, and a real Qwen3 would have reasoned first.
# MiniCPM5's and RWKV-World's render no block in training and add one to the prompt when thinking is off. So the
# flag is chosen per template, by the rule every chat template must keep: the prompt at inference is the text
# training put before the reply (`template_kwargs`).
THINKING_CHOICES: tuple[dict[str, Any], ...] = ({}, {"enable_thinking": False})
_PROBE_REPLY = "PROBE-REPLY-7f3a"
_kwargs_cache: dict[str, dict[str, Any]] = {}


def _reads_thinking(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template reads the `enable_thinking` flag at all."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "enable_thinking" in template


def template_kwargs(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The flags finetune renders this tokenizer's chat template with, for training and inference alike: none,
    unless the template reads `enable_thinking` and only thinking off makes the generation prompt the text that
    training puts before a reply (Qwen3)."""
    if not _reads_thinking(tokenizer):
        return {}
    template = tokenizer.chat_template
    if template not in _kwargs_cache:
        _kwargs_cache[template] = next((kw for kw in THINKING_CHOICES if _prompt_is_prefix(tokenizer, kw)), {})
    return _kwargs_cache[template]


def _probe(tokenizer: PreTrainedTokenizerBase, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """(training text of a one-turn probe row, its generation prompt) with these flags; None if refused."""
    turns = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": _PROBE_REPLY}]
    try:
        return (tokenizer.apply_chat_template(turns, tokenize=False, **kwargs),
                tokenizer.apply_chat_template(turns[:1], tokenize=False, add_generation_prompt=True, **kwargs))
    except Exception:  # a template that refuses the probe: no evidence for these flags
        return None


def _prompt_is_prefix(tokenizer: PreTrainedTokenizerBase, kwargs: dict[str, Any]) -> bool:
    """Whether, with these flags, a generation prompt is the start of the training text of its reply."""
    probe = _probe(tokenizer, kwargs)
    return probe is not None and _starts_the_row(*probe)


def _starts_the_row(full: str, head: str) -> bool:
    """Whether `head` (a generation prompt) is `full` (the training text) up to the probe's reply."""
    return full.startswith(head) and full[len(head):].lstrip().startswith(_PROBE_REPLY)


def prompt_mismatch(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Where no flag makes the chat template's generation prompt the text training puts before a reply, what
    differs, as a warning (None where it holds). Templates that always open a reasoning block at inference
    (DeepSeek-R1's, QwQ's, Gemma 4's thought channel) prompt after text the trained replies never followed."""
    kwargs = template_kwargs(tokenizer)
    probe = _probe(tokenizer, kwargs)
    if probe is None or _starts_the_row(*probe):  # a refusing template says so itself when the data is rendered
        return None
    full, head = probe
    common = len(os.path.commonprefix([full, head]))
    return (f"chat template: prompts at inference end {head[common:][:60]!r} where training rows continue "
            f"{full[common:].replace(_PROBE_REPLY, '<reply>')[:60]!r}: replies are trained after other text than "
            "they are asked with (a reasoning template's own block; see docs/export.md)")


# Prepended to a saved chat template rendered with thinking off, so that runtimes which render it without flags
# (llama-cpp-python's chat completion over a GGUF, plain transformers on an adapter folder) prompt as training
# did; a caller that passes the flag still decides.
THINKING_OFF_DEFAULT = "{%- if enable_thinking is not defined %}{%- set enable_thinking = false %}{%- endif %}\n"


def saved_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The tokenizer's chat template as finetune saves it beside a trained model: thinking off by default where
    finetune renders it so (`template_kwargs`), else unchanged."""
    template = getattr(tokenizer, "chat_template", None)
    if (not isinstance(template, str) or template.startswith(THINKING_OFF_DEFAULT)
            or template_kwargs(tokenizer).get("enable_thinking") is not False):
        return template
    return THINKING_OFF_DEFAULT + template


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    """Save a tokenizer with its chat template as `saved_template` writes it (the tokenizer itself unchanged)."""
    template = getattr(tokenizer, "chat_template", None)
    saved = saved_template(tokenizer)
    if saved is template:
        tokenizer.save_pretrained(str(folder))
        return
    tokenizer.chat_template = saved
    try:
        tokenizer.save_pretrained(str(folder))
    finally:
        tokenizer.chat_template = template


def apply_template(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
                   add_generation_prompt: bool = False) -> str:
    """The chat template's text for these messages as given (no folding), with its `template_kwargs`."""
    return tokenizer.apply_chat_template(_plain(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs(tokenizer))


def render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], add_generation_prompt: bool = False
) -> str:
    """Render with the chat template; where the template refuses a system role, fold the system text in."""
    return apply_template(tokenizer, chat_messages(tokenizer, messages), add_generation_prompt)


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Only role and content (templates must not see our per-message weight)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def chat_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as the template will render them: unchanged, or with the system text folded (see docs)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    try:
        apply_template(tokenizer, messages[:2])
        return messages
    except Exception as exc:  # jinja2's raise_exception: the template's own words say why
        # No system role: Gemma's says "system"; Mistral 7B Instruct v0.1's only says roles must alternate,
        # but takes the same turn without the system one.
        if "system" not in str(exc).lower() and not _renders(tokenizer, messages[1:2]):
            name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
            raise DataError(f"chat template of {name}: {str(exc).splitlines()[0]}") from None
    return fold_system(messages)


def _renders(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> bool:
    """Whether the chat template renders these messages without raising."""
    try:
        apply_template(tokenizer, messages)
        return True
    except Exception:  # the template's raise_exception
        return False


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The text that closes an assistant turn in this tokenizer's chat template (e.g. <|im_end|>)."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "MARK"}]
    text = apply_template(tokenizer, probe)
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
    """Render with the chat template and label only assistant tokens (the rest get -100); one row."""
    text, spans = _render(tokenizer, messages, terminator)
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, labels = encoded["input_ids"], _labels_by_offsets(encoded["input_ids"], encoded["offset_mapping"], spans)
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = _labels_by_prefix(tokenizer, text, ids, spans)
    return _token_row(ids, labels, max_length)


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], terminator: str | None
) -> tuple[str, list[tuple[int, int]]]:
    """The row's text as the chat template renders it, and the character spans the loss learns."""
    messages = chat_messages(tokenizer, messages)
    text = apply_template(tokenizer, messages)
    return text, _assistant_spans(text, messages, terminator, _reply_starts(tokenizer, text, messages))


def _labels_by_offsets(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels from a fast tokenizer's character offsets: a token is learned when it ends inside a span.

    Ending, not lying, inside: a reply's first word can carry the template's space before it (Llama 2's
    "[/INST] Arr" gives "▁Arr"), and the model has to produce that token to say the word.
    """
    return [
        tok if any(s < b <= e for s, e in spans) else IGNORE_INDEX
        for tok, (a, b) in zip(ids, offsets)
    ]


def _labels_by_prefix(
    tokenizer: PreTrainedTokenizerBase, text: str, ids: list[int], spans: list[tuple[int, int]]
) -> list[int]:
    """Labels for a slow tokenizer (no offsets): token boundaries found by tokenising the text up to each span."""
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        a = len(tokenizer(text[:start], add_special_tokens=False)["input_ids"])
        b = len(tokenizer(text[:end], add_special_tokens=False)["input_ids"])
        labels[a:b] = ids[a:b]
    return labels


def _token_row(ids: list[int], labels: list[int], max_length: int) -> dict[str, Any]:
    """A tokenised row in the stored format (module docstring), cut to max_length."""
    prompt = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    cut_ids, cut_labels = ids[:max_length], labels[:max_length]
    return {
        "input_ids": cut_ids,
        "labels": cut_labels,
        "length": len(cut_ids),
        "full_length": len(ids),
        "prompt_length": prompt,
        "loss_tokens": sum(1 for x in cut_labels if x != IGNORE_INDEX),
        "truncated": len(ids) > max_length,
    }


def _tokenize_batch(
    batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, max_length: int, terminator: str | None
) -> dict[str, list[Any]]:
    """Dataset.map's work on a batch of stored rows: rendered, encoded in one tokenizer call, masked, cut."""
    rendered = [_render(tokenizer, _conversation({"messages": m, "line": 0}).messages, terminator)
                for m in batch["messages"]]
    texts = [text for text, _ in rendered]
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        rows = [_token_row(ids, _labels_by_offsets(ids, offsets, spans), max_length)
                for ids, offsets, (_, spans) in zip(encoded["input_ids"], encoded["offset_mapping"], rendered)]
    else:
        rows = []
        for ids, (text, spans) in zip(tokenizer(texts, add_special_tokens=False)["input_ids"], rendered):
            rows.append(_token_row(ids, _labels_by_prefix(tokenizer, text, ids, spans), max_length))
    return {column: [row[column] for row in rows] for column in TOKEN_COLUMNS}


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides a tokenizer's output: vocabulary and rules, special tokens, chat template."""
    import tokenizers
    import transformers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return _digest(type(tokenizer).__name__, rules, specials, str(getattr(tokenizer, "chat_template", None)),
                   transformers.__version__, tokenizers.__version__)


def tokenize_rows(
    tokenizer: PreTrainedTokenizerBase, conversations: Conversations | list[Conversation], max_length: int
) -> Any:
    """Every row tokenised (columns in the module docstring), in order; Arrow rows of a file are cached.

    The whole file is tokenised once per key (content, tokenizer, max_length, this module's code) and a
    split is a selection of it, so a second run, or another split of the same file, tokenises nothing.
    """
    from datasets.arrow_dataset import Dataset
    from datasets.fingerprint import generate_random_fingerprint

    if isinstance(conversations, Conversations):
        rows, key, indices = conversations.rows, conversations.key, conversations.indices
    else:
        stored = [{"messages": _stored(c.messages), "line": c.line} for c in conversations]
        rows, key, indices = Dataset.from_list(stored, features=_row_features()), None, None
    work = partial(_tokenize_batch, tokenizer=tokenizer, max_length=max_length,
                   terminator=end_of_turn_token(tokenizer))
    options: dict[str, Any] = {"keep_in_memory": True, "new_fingerprint": generate_random_fingerprint()}
    if key is not None:
        fingerprint = _digest("tokens", key, tokenizer_identity(tokenizer), str(max_length), CODE_VERSION)
        cache_dir().mkdir(parents=True, exist_ok=True)
        options = {"cache_file_name": str(cache_dir() / f"tokens-{fingerprint}.arrow"),
                   "load_from_cache_file": True, "new_fingerprint": fingerprint}
    with _quiet():
        tokens = rows.map(work, batched=True, batch_size=MAP_BATCH, remove_columns=rows.column_names,
                          features=_token_features(), **options)
    return tokens if indices is None else tokens.select(indices)


def column(tokens: Any, name: str) -> Any:
    """One scalar column of a dataset as a numpy array, read from Arrow in one slice (row by row: ~1 ms a row)."""
    return tokens.select_columns(name).with_format("arrow")[:][name].to_numpy()


def trainable(tokens: Any) -> Any:
    """The tokenised rows that keep a label within max_length (training drops rows cut to no reply)."""
    import numpy as np

    keep = np.flatnonzero(column(tokens, "loss_tokens") > 0)
    return tokens if len(keep) == len(tokens) else tokens.select(keep.tolist())


def row_lengths(tokens: Any) -> list[int]:
    """Each tokenised row's length, read from the `length` column (not by loading every row's ids)."""
    if "length" not in tokens.column_names:
        return [len(ids) for ids in tokens["input_ids"]]
    return column(tokens, "length").tolist()


def tokenize_conversations(
    tokenizer: PreTrainedTokenizerBase, conversations: Conversations | list[Conversation], max_length: int
) -> Any:
    """Tokenise rows into a `datasets.Dataset` (columns in the module docstring), dropping rows cut to no labels."""
    return tokenize_with_drops(tokenizer, conversations, max_length)[0]


def tokenize_with_drops(
    tokenizer: PreTrainedTokenizerBase, conversations: Conversations | list[Conversation], max_length: int
) -> tuple[Any, list[int]]:
    """The rows training keeps (as tokenize_conversations) and the file lines of those it drops: rows whose
    every reply max_length cuts off, so that a run can say which rows it never trains on."""
    tokens = tokenize_rows(tokenizer, conversations, max_length)
    kept = trainable(tokens)
    return kept, ([] if len(kept) == len(tokens) else dropped_lines(tokens, conversations))


def dropped_lines(tokens: Any, conversations: Conversations | list[Conversation]) -> list[int]:
    """The file lines of the tokenised rows left with no label (max_length cut every reply): training drops them."""
    import numpy as np

    return [conversations[i].line for i in np.flatnonzero(column(tokens, "loss_tokens") == 0).tolist()]


def dropped_text(lines: list[int], total: int, max_length: int, what: str = "training rows dropped") -> str:
    """'3 of 16 training rows dropped: dataset.max_length=64 cuts off every reply (lines 2, 5, 9); ...'."""
    shown = ", ".join(str(line) for line in lines[:10]) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")
    return (f"{len(lines)} of {total} {what}: dataset.max_length={max_length} cuts off every reply "
            f"(line{'s' if len(lines) > 1 else ''} {shown}); raise max_length to keep them")


def length_stats(lengths: list[int]) -> dict[str, int]:
    """p50, p95 and max of token lengths."""
    if not lengths:
        return {"p50": 0, "p95": 0, "max": 0}
    ordered = sorted(lengths)

    def pick(q: float) -> int:
        # Interpolated between neighbours (numpy's default): nearest-rank rounding made the median of two rows
        # the longer one, so "p50 6044  max 6044" for rows of 3,034 and 6,044 tokens.
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low))

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
