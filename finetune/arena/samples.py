"""Read the output folder of `finetune compare` and list the pairs the arena can show."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from finetune.errors import DataError

KINDS = ("single", "multi", "long")
_REQUIRED = {
    "run": str,
    "arm": str,
    "prompt_id": str,
    "kind": str,
    "turn": int,
    "conversation": list,
    "text": str,
}


@dataclass(frozen=True)
class Sample:
    """One arm's reply to one prompt turn, as compare wrote it."""

    run: str
    arm: str
    prompt_id: str
    kind: str
    turn: int
    conversation: tuple[tuple[str, str], ...]
    text: str
    scores: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def style(self) -> float | None:
        """Return compare's automatic style score, or None when it is missing."""
        value = self.scores.get("style")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def user_turns(self) -> list[str]:
        """Return the user messages of the conversation, in order."""
        return [content for role, content in self.conversation if role == "user"]

    def earlier_replies(self) -> list[str]:
        """Return this arm's own earlier assistant replies in the conversation (multi-turn context)."""
        return [content for role, content in self.conversation if role == "assistant"]


@dataclass(frozen=True)
class Item:
    """A schedulable comparison: one prompt turn of one compare folder, two arms (sorted)."""

    source: str
    prompt_id: str
    turn: int
    arms: tuple[str, str]


@dataclass
class CompareSet:
    """The samples of one compare folder, indexed by (prompt_id, turn) then arm."""

    source: str
    run: str
    samples: dict[tuple[str, int], dict[str, Sample]]

    @property
    def name(self) -> str:
        """Return the folder name, used as a short label."""
        return Path(self.source).name

    def items(self) -> list[Item]:
        """Return every (prompt turn, arm pair) where both arms have a reply."""
        out = []
        for (prompt_id, turn), by_arm in sorted(self.samples.items()):
            for pair in combinations(sorted(by_arm), 2):
                out.append(Item(self.source, prompt_id, turn, pair))
        return out

    def sample(self, prompt_id: str, turn: int, arm: str) -> Sample:
        """Return one arm's sample for a prompt turn."""
        return self.samples[(prompt_id, turn)][arm]


def _parse_line(raw: str, where: str) -> Sample:
    """Validate one samples.jsonl line against compare's contract and build a Sample."""
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in row:
            raise DataError(f"{where}: missing key {key!r}")
        value = row[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DataError(f"{where}: key {key!r} should be {kind.__name__}, got {type(value).__name__}")
    if row["kind"] not in KINDS:
        raise DataError(f"{where}: kind {row['kind']!r} should be one of {', '.join(KINDS)}")
    conversation = []
    for n, message in enumerate(row["conversation"]):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise DataError(f"{where}: conversation[{n}] should be an object with string role and content")
        conversation.append((message["role"], message["content"]))
    scores = row.get("scores") or {}
    if not isinstance(scores, dict):
        raise DataError(f"{where}: key 'scores' should be an object, got {type(scores).__name__}")
    return Sample(
        run=row["run"],
        arm=row["arm"],
        prompt_id=row["prompt_id"],
        kind=row["kind"],
        turn=row["turn"],
        conversation=tuple(conversation),
        text=row["text"],
        scores=scores,
    )


def load_compare(folder: str | Path) -> CompareSet:
    """Read `samples.jsonl` of one compare folder; raise DataError naming the file and line if malformed."""
    folder = Path(folder)
    path = folder / "samples.jsonl"
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected the output folder of `finetune compare`)")
    if not path.is_file():
        inside = [p.parent for p in sorted(folder.glob("*/samples.jsonl"), key=lambda p: p.stat().st_mtime)]
        if inside:  # outputs/<run>/compare holds one folder per compare
            raise DataError(f"{folder}: a folder of {len(inside)} compare folder(s), not one; name one of them "
                            f"(the newest: {inside[-1]})")
        raise DataError(f"{path}: missing (expected the output folder of `finetune compare`)")
    samples: dict[tuple[str, int], dict[str, Sample]] = {}
    runs: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            sample = _parse_line(raw, where)
            by_arm = samples.setdefault((sample.prompt_id, sample.turn), {})
            if sample.arm in by_arm:
                raise DataError(
                    f"{where}: second reply of arm {sample.arm!r} to prompt {sample.prompt_id!r} "
                    f"turn {sample.turn} (expected one per arm)"
                )
            by_arm[sample.arm] = sample
            runs.add(sample.run)
    compare = CompareSet(source=str(folder.resolve()), run=",".join(sorted(runs)), samples=samples)
    if not compare.items():
        raise DataError(f"{path}: no prompt has replies from two arms, so there is nothing to compare")
    return compare


def load_compares(folders: list[str | Path]) -> dict[str, CompareSet]:
    """Load several compare folders, keyed by their resolved path (the `source` stored with votes)."""
    out: dict[str, CompareSet] = {}
    for folder in folders:
        compare = load_compare(folder)
        out.setdefault(compare.source, compare)
    return out
