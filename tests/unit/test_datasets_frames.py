"""The persona datasets carry the voice through the answers, not a reused frame (issue 21, item 4)."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT / "datasets"


def _load(name: str):
    """Import a script from scripts/ as a module (scripts are not part of the package)."""
    # data_frames imports make_datasets by name and puts scripts/ on sys.path; the path is restored after, since
    # scripts/llama_cpp.py would otherwise shadow the llama_cpp package for every later test in the process.
    saved = list(sys.path)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


MAKE = _load("make_datasets")
FRAMES = _load("data_frames")
# Training files and the least share of their content sentences that must carry a marker. Before the fix
# pirate.jsonl had 0.20 (the voice sat in the frame); the お嬢様 answers are written in voice (0.78 before).
VOICED = {
    "pirate.jsonl": 0.6,
    "alpaca_sample.jsonl": 0.6,
    "prompt_completion_sample.jsonl": 0.6,
    "ojousama.jsonl": 0.7,
}


def test_reuse_cap_is_small() -> None:
    # The cap is the guard: raising it to pass would let the frames back (they were reused 40-57 times).
    assert 1 <= MAKE.MAX_SENTENCE_REUSE <= 5


@pytest.mark.parametrize("rel", sorted(VOICED))
def test_no_assistant_sentence_reused_beyond_cap(rel: str) -> None:
    stats = FRAMES.frame_stats(FRAMES.replies(DATASETS / rel), top=3)
    assert stats["max_sentence_reuse"] <= MAKE.MAX_SENTENCE_REUSE, f"{rel}: most reused {stats['top_sentences']}"
    assert stats["frame_share"] == 0.0, f"{rel}: {stats['frame_share']} of the assistant text is frame"


@pytest.mark.parametrize("rel", ["pirate.jsonl", "alpaca_sample.jsonl", "prompt_completion_sample.jsonl"])
def test_pirate_replies_do_not_share_an_opening_or_closing_phrase(rel: str) -> None:
    # "Shiver me timbers" opened 46 of 414 replies before the fix; a phrase can be a frame as well as a sentence.
    stats = FRAMES.frame_stats(FRAMES.replies(DATASETS / rel), top=1)
    assert stats["max_start_reuse"] <= MAKE.PIRATE_MAX_EDGE_REUSE, f"{rel}: {stats['top_starts']}"
    assert stats["max_end_reuse"] <= MAKE.PIRATE_MAX_EDGE_REUSE, f"{rel}: {stats['top_ends']}"
    assert MAKE.PIRATE_MAX_EDGE_REUSE <= 0.05 * stats["replies"] or rel != "pirate.jsonl"


@pytest.mark.parametrize("rel", sorted(VOICED))
def test_voice_lives_in_the_answer(rel: str) -> None:
    stats = FRAMES.frame_stats(FRAMES.replies(DATASETS / rel), FRAMES.MARKERS[rel])
    share = stats["content_sentences_in_voice"]
    assert share >= VOICED[rel], f"{rel}: only {share} of content sentences carry a marker"


def test_frame_stats_flags_a_reused_frame() -> None:
    replies = [f"Answer number {i} is here and it is long enough. Arr, ye be right on time, matey!" for i in range(6)]
    stats = FRAMES.frame_stats(replies, MAKE.PIRATE_MARKERS)
    assert stats["max_sentence_reuse"] == 6
    assert stats["top_closers"][0] == ("Arr, ye be right on time, matey!", 6)
    assert 0.3 < stats["frame_share"] < 0.5
    assert stats["content_sentences_in_voice"] == 0.0


def test_voice_draws_do_not_move_the_questions() -> None:
    # The held-out split is by row index: which question a row asks must not depend on the voice's draws.
    pirate = MAKE.pirate_persona()
    quieter = dataclasses.replace(pirate, tails=[", matey", ", arr", ", aye"], weave_share=0.6)

    def users(persona) -> list[list[str]]:
        rows = MAKE.build_chat_rows(persona, MAKE.PIRATE_ROWS, f"{MAKE.SEED}:pirate")
        return [[m["content"] for m in r["messages"] if m["role"] != "assistant"] for r in rows]

    assert users(pirate) == users(quieter)


def test_leads_keep_names_capitalised() -> None:
    # "Arr, jupiter is ..." would change the answer's content; a lead lower-cases only ordinary words.
    pirate = MAKE.pirate_persona()
    voice = [*pirate.leads, *pirate.body_leads, *pirate.tails, *pirate.interjections, *pirate.addresses]
    voice += [t for table in (pirate.openers, pirate.closers) for ts in table.values() for t in ts]
    source = " ".join([q.answer + " " + (q.follow_a or "") for q in pirate.qa] + voice)
    # Names whose lower-case form neither the answers nor the voice use ("moon", "city", "mark ye" do).
    names = sorted(w for w in pirate.proper if w.isalpha() and not re.search(r"\b" + w.lower() + r"\b", source))
    assert {"Jupiter", "Tokyo"} <= set(names)
    text = " ".join(FRAMES.replies(DATASETS / "pirate.jsonl"))
    lowered = [w for w in names if re.search(r"\b" + w.lower() + r"\b", text)]
    assert not lowered, f"names lower-cased in replies: {lowered}"
