"""Text metrics: style-marker hits, sentence splitting and the first/last thirds of a long answer (pure)."""

from __future__ import annotations

import math
import re

# Sentence ends in English and Japanese; a newline also ends a sentence (lists, paragraphs).
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])|\n+")


def compile_markers(patterns: list[str]) -> list[re.Pattern[str]]:
    """The recipe's style.markers as case-insensitive regular expressions."""
    return [re.compile(p, re.IGNORECASE) for p in patterns]


def marker_hit(text: str, markers: list[re.Pattern[str]]) -> float | None:
    """1.0 if the text matches any marker, 0.0 if none, None when the recipe has no markers."""
    if not markers:
        return None
    return 1.0 if any(m.search(text) for m in markers) else 0.0


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, in order, empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def first_last_thirds(text: str) -> tuple[str, str]:
    """The first and last third of a text by sentences (at least one sentence each; equal if only one)."""
    sentences = split_sentences(text)
    if not sentences:
        return "", ""
    k = max(1, math.ceil(len(sentences) / 3))
    return " ".join(sentences[:k]), " ".join(sentences[-k:])
