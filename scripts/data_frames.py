#!/usr/bin/env python
"""How much of a dataset's assistant text is a reused frame rather than an answer.

    python scripts/data_frames.py                       # every datasets/*.jsonl
    python scripts/data_frames.py FILE... [--top 8] [--json]

Per file: replies and sentences, the most repeated assistant sentences, openers (a reply's first
sentence) and closers (its last), and replies' first and last three words, with their counts; the
share of assistant text that sits in frame sentences, and, for the persona files, how often the voice
reaches the sentences that carry content. A model trained
on a handful of openers and closers reused 20-30 times each learns the frame, not the voice, and loops
on it (issue 21); this is the measurement behind scripts/make_datasets.py's MAX_SENTENCE_REUSE.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_datasets import OJOUSAMA_MARKERS, PIRATE_MARKERS  # noqa: E402

from finetune.compare.quality import units  # noqa: E402
from finetune.data import load_conversations  # noqa: E402

# A sentence ends at . ! ? (then a space) or at 。！？, or at a line break (poems).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")
# A question's answer is in about two rows plus follow-ups (at most 4 replies in the shipped files before
# issue 21's fix), so a sentence in this many replies or more is frame, not content.
FRAME_MIN_REPLIES = 5
# Marker regexes per shipped file name; other files get no voice figures.
MARKERS = {
    "pirate.jsonl": PIRATE_MARKERS,
    "alpaca_sample.jsonl": PIRATE_MARKERS,
    "prompt_completion_sample.jsonl": PIRATE_MARKERS,
    "ojousama.jsonl": OJOUSAMA_MARKERS,
}


def sentences(text: str) -> list[str]:
    """The sentences of one reply, stripped, empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def replies(path: Path) -> list[str]:
    """Every assistant message of a dataset file, in any format finetune reads."""
    return [m["content"] for c in load_conversations(path) for m in c.messages if m["role"] == "assistant"]


def _in_voice(text: str, markers: list[str]) -> bool:
    """Whether a marker regex matches the text (case-insensitive)."""
    return any(re.search(m, text, re.IGNORECASE) for m in markers)


def frame_stats(texts: list[str], markers: list[str] | None = None, top: int = 8) -> dict:
    """Repetition figures of a list of replies (see the module docstring)."""
    split = [sentences(t) for t in texts]
    per_reply = Counter(s for parts in split for s in set(parts))
    uses = Counter(s for parts in split for s in parts)
    openers = Counter(parts[0] for parts in split if len(parts) > 1)
    closers = Counter(parts[-1] for parts in split if len(parts) > 1)
    # A reply's first and last three words (characters in Japanese): a frame can hide in a phrase too.
    starts = Counter(" ".join(units(t)[:3]) for t in texts)
    ends = Counter(" ".join(units(t)[-3:]) for t in texts)
    total_chars = sum(len(s) for parts in split for s in parts) or 1
    frame_chars = sum(len(s) for parts in split for s in parts if per_reply[s] >= FRAME_MIN_REPLIES)
    stats: dict = {
        "replies": len(texts),
        "sentences": sum(uses.values()),
        "distinct_sentences": len(uses),
        "max_sentence_reuse": max(uses.values(), default=0),
        "sentences_in_5plus_replies": sum(1 for n in per_reply.values() if n >= FRAME_MIN_REPLIES),
        "frame_share": round(frame_chars / total_chars, 4),
        "distinct_openers": len(openers),
        "distinct_closers": len(closers),
        "max_start_reuse": max(starts.values(), default=0),
        "max_end_reuse": max(ends.values(), default=0),
        "top_sentences": uses.most_common(top),
        "top_openers": openers.most_common(top),
        "top_closers": closers.most_common(top),
        "top_starts": starts.most_common(top),
        "top_ends": ends.most_common(top),
    }
    if markers:
        # Content sentences: not frame, and long enough to say something (a bare "Arr, matey!" is not).
        content = [s for s in uses.elements() if per_reply[s] < FRAME_MIN_REPLIES and len(units(s)) >= 6]
        stats["content_sentences_in_voice"] = round(
            sum(_in_voice(s, markers) for s in content) / max(len(content), 1), 4
        )
        bodies = [parts[1:-1] for parts in split if len(parts) > 2]
        stats["replies_with_voice_in_body"] = round(
            sum(any(_in_voice(s, markers) for s in body) for body in bodies) / max(len(bodies), 1), 4
        )
    return stats


def _print(name: str, stats: dict) -> None:
    """A readable block for one file."""
    print(f"== {name}")
    scalars = {k: v for k, v in stats.items() if not k.startswith("top_")}
    print("   " + "  ".join(f"{k} {v}" for k, v in scalars.items()))
    for key in ("top_sentences", "top_openers", "top_closers", "top_starts", "top_ends"):
        print(f"   {key[4:]}:")
        for text, count in stats[key]:
            print(f"     {count:4d}  {text[:90]}")


def main(argv: list[str] | None = None) -> int:
    """Print (or emit as JSON) the frame figures of each dataset file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="JSONL files (default: datasets/*.jsonl)")
    parser.add_argument("--top", type=int, default=8, help="How many of the most repeated to list.")
    parser.add_argument("--json", action="store_true", help="One JSON object keyed by file name.")
    args = parser.parse_args(argv)
    files = args.files or sorted((ROOT / "datasets").glob("*.jsonl"))
    results = {str(p) if args.files else p.name: frame_stats(replies(p), MARKERS.get(p.name), args.top) for p in files}
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=1))
    else:
        for name, stats in results.items():
            _print(name, stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
