"""The shipped datasets: well-formed JSONL, in voice, varied, and reproducible from the script."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT / "datasets"
SCRIPT = ROOT / "scripts" / "make_datasets.py"

# Minimum row counts per shipped file (path relative to datasets/).
MIN_ROWS = {
    "pirate.jsonl": 320,
    "ojousama.jsonl": 160,
    "alpaca_sample.jsonl": 20,
    "prompt_completion_sample.jsonl": 20,
    "eval/pirate_conversations.jsonl": 12,
    "eval/long_prompts.jsonl": 12,
    "eval/long_prompts_ja.jsonl": 8,
    "eval/commonsense_en.jsonl": 60,
    "eval/commonsense_ja.jsonl": 60,
}
CHAT_FILES = {"pirate.jsonl": "pirate", "ojousama.jsonl": "ojousama"}


def _load_script():
    """Import scripts/make_datasets.py as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_datasets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


MAKE = _load_script()
MARKERS = {"pirate": MAKE.PIRATE_MARKERS, "ojousama": MAKE.OJOUSAMA_MARKERS}


def _rows(rel: str) -> list[dict]:
    """Parse one shipped file strictly as UTF-8 JSONL (one object per non-empty line)."""
    text = (DATASETS / rel).read_bytes().decode("utf-8")
    assert text.endswith("\n"), f"{rel}: last line must end with a newline"
    rows = []
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        assert line.strip(), f"{rel}:{lineno}: blank line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{rel}:{lineno}: not a JSON object"
        rows.append(row)
    return rows


def _in_voice(text: str, persona: str) -> bool:
    """True when `text` matches one of the persona's marker regexes, case-insensitively."""
    return any(re.search(m, text, re.IGNORECASE) for m in MARKERS[persona])


def _assistant_turns(row: dict) -> list[str]:
    """The assistant messages of a chat row."""
    return [m["content"] for m in row["messages"] if m["role"] == "assistant"]


@pytest.mark.parametrize("rel", sorted(MIN_ROWS))
def test_file_parses_and_meets_minimum(rel: str) -> None:
    rows = _rows(rel)
    assert len(rows) >= MIN_ROWS[rel], f"{rel}: {len(rows)} rows, expected at least {MIN_ROWS[rel]}"


@pytest.mark.parametrize("rel", sorted(MIN_ROWS))
def test_no_duplicate_rows(rel: str) -> None:
    keys = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in _rows(rel)]
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    assert not dupes, f"{rel}: duplicate rows, e.g. {dupes[0][:120]}"


def test_markers_do_not_match_plain_text() -> None:
    # Guards the voice checks below: plain answers must not pass as in-voice.
    assert not _in_voice("The capital of France is Paris. You can get there by train.", "pirate")
    assert not _in_voice("フランスの首都はパリです。電車で行けます。", "ojousama")
    assert _in_voice("Arr, the capital of France be Paris, matey!", "pirate")
    assert _in_voice("フランスの首都はパリですわ。", "ojousama")


@pytest.mark.parametrize("rel", sorted(CHAT_FILES))
def test_chat_rows_are_well_formed_and_in_voice(rel: str) -> None:
    persona = CHAT_FILES[rel]
    for i, row in enumerate(_rows(rel), 1):
        assert set(row) == {"messages"}, f"{rel}:{i}: keys {sorted(row)}"
        roles = [m["role"] for m in row["messages"]]
        body = roles[1:] if roles[0] == "system" else roles
        assert body and len(body) % 2 == 0, f"{rel}:{i}: roles {roles}"
        assert body == ["user", "assistant"] * (len(body) // 2), f"{rel}:{i}: roles {roles}"
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in row["messages"])
        for reply in _assistant_turns(row):
            assert _in_voice(reply, persona), f"{rel}:{i}: reply without a {persona} marker: {reply!r}"


@pytest.mark.parametrize("rel", sorted(CHAT_FILES))
def test_multi_turn_and_system_shares(rel: str) -> None:
    rows = _rows(rel)
    multi = sum(1 for r in rows if len(_assistant_turns(r)) > 1)
    assert 0.10 <= multi / len(rows) <= 0.30, f"{rel}: multi-turn share {multi / len(rows):.2f}"
    system = [r["messages"][0]["content"] for r in rows if r["messages"][0]["role"] == "system"]
    share = len(system) / len(rows)
    assert 0.05 <= share <= 0.20, f"{rel}: system-prompt share {share:.2f}"
    persona = CHAT_FILES[rel]
    # The voice must come from training, not from a persona instruction in the system prompt.
    assert not any(_in_voice(s, persona) or "pirate" in s.lower() or "お嬢様" in s for s in system)


def test_pirate_voice_opens_and_closes_replies() -> None:
    replies = [t for r in _rows("pirate.jsonl") for t in _assistant_turns(r)]
    early = sum(_in_voice(t[:40], "pirate") for t in replies)
    late = sum(_in_voice(t[-60:], "pirate") for t in replies)
    n = len(replies)
    assert early / n >= 0.8, f"only {early}/{n} replies are in voice in their first 40 characters"
    assert late / n >= 0.9, f"only {late}/{n} replies are in voice in their last 60 characters"


def test_question_tables_are_large_and_all_used() -> None:
    pirate_qa, ojou_qa = MAKE.pirate_persona().qa, MAKE.ojousama_persona().qa
    assert len({q.question for q in pirate_qa}) >= 150
    assert len({q.question for q in ojou_qa}) >= 80
    for rel, table in (("pirate.jsonl", pirate_qa), ("ojousama.jsonl", ojou_qa)):
        users = " ".join(m["content"] for r in _rows(rel) for m in r["messages"] if m["role"] == "user")
        unused = [q.question for q in table if q.question not in users]
        assert not unused, f"{rel}: questions never used, e.g. {unused[:3]}"


def test_alpaca_and_prompt_completion_rows() -> None:
    alpaca = _rows("alpaca_sample.jsonl")
    for i, row in enumerate(alpaca, 1):
        assert {"instruction", "output"} <= set(row) <= {"instruction", "input", "output"}, f"alpaca:{i}"
        assert row["instruction"].strip() and _in_voice(row["output"], "pirate"), f"alpaca:{i}: {row}"
    assert any("input" in r for r in alpaca) and any("input" not in r for r in alpaca)
    for i, row in enumerate(_rows("prompt_completion_sample.jsonl"), 1):
        assert set(row) == {"prompt", "completion"}, f"prompt_completion:{i}"
        assert row["prompt"].strip(), f"prompt_completion:{i}: empty prompt"
        assert _in_voice(row["completion"], "pirate"), f"prompt_completion:{i}: {row}"


@pytest.mark.parametrize("rel", ["eval/commonsense_en.jsonl", "eval/commonsense_ja.jsonl"])
def test_commonsense_rows(rel: str) -> None:
    rows = _rows(rel)
    keys = {"q_id", "question", "label"} | {f"choice{k}" for k in range(5)}
    for row in rows:
        assert set(row) == keys, f"{rel}: q_id {row.get('q_id')}: keys {sorted(row)}"
        choices = [row[f"choice{k}"] for k in range(5)]
        assert all(isinstance(c, str) and c for c in choices) and len(set(choices)) == 5
        assert row["label"] in range(5)
    assert [r["q_id"] for r in rows] == list(range(len(rows)))
    counts = Counter(r["label"] for r in rows)
    assert all(counts[k] >= 8 for k in range(5)), f"{rel}: label positions {dict(counts)}"


def test_commonsense_ja_is_japanese() -> None:
    kana = re.compile(r"[\u3040-\u30ff]")
    assert all(kana.search(r["question"]) for r in _rows("eval/commonsense_ja.jsonl"))


def test_eval_conversations() -> None:
    rows = _rows("eval/pirate_conversations.jsonl")
    assert [r["id"] for r in rows] == [f"conv-{i:02d}" for i in range(1, len(rows) + 1)]
    training = {m["content"] for r in _rows("pirate.jsonl") for m in r["messages"] if m["role"] == "user"}
    training |= {q.question for q in MAKE.pirate_persona().qa}
    for row in rows:
        assert set(row) == {"id", "turns"}
        assert len(row["turns"]) == 6, f"{row['id']}: {len(row['turns'])} turns"
        assert all(isinstance(t, str) and t.strip() for t in row["turns"])
        assert not set(row["turns"]) & training, f"{row['id']}: reuses a training question"


@pytest.mark.parametrize(
    ("rel", "prefix", "japanese"),
    [("eval/long_prompts.jsonl", "long-", False), ("eval/long_prompts_ja.jsonl", "long-ja-", True)],
)
def test_long_prompts(rel: str, prefix: str, japanese: bool) -> None:
    rows = _rows(rel)
    assert [r["id"] for r in rows] == [f"{prefix}{i:02d}" for i in range(1, len(rows) + 1)]
    for row in rows:
        assert set(row) == {"id", "prompt"} and row["prompt"].strip()
        assert bool(re.search(r"[\u3040-\u30ff]", row["prompt"])) == japanese, row["id"]


def test_script_reproduces_shipped_files_byte_for_byte(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    shipped = sorted(p.relative_to(DATASETS).as_posix() for p in DATASETS.rglob("*.jsonl"))
    made = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl"))
    assert made == sorted(MIN_ROWS)
    assert shipped == made, "datasets/ holds files the script does not make (or lacks some it makes)"
    for rel in made:
        same = (tmp_path / rel).read_bytes() == (DATASETS / rel).read_bytes()
        assert same, f"datasets/{rel} differs from the script's output: rerun scripts/make_datasets.py"
