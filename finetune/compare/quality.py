"""Answer quality of one reply, independent of its voice: loops, distinct-n, end-of-turn, content kept.

Plain functions so that other commands (distill) score replies exactly as compare does. Text is cut
into units: a word for alphabetic scripts, one character for Japanese and Chinese (which do not put
spaces between words). docs/compare.md explains every threshold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

# A unit is a CJK character, or a run of letters/digits (apostrophes kept: "ye'll" is one word).
_UNIT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+(?:'[^\W_]+)*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# Loop n-gram: 4 words, or 8 characters of Japanese/Chinese (about the same amount of meaning).
LOOP_N_WORDS = 4
LOOP_N_CJK = 8
# A reply loops when at least this share of its n-grams repeat an earlier one. Measured (2026-12-02): the
# shipped persona datasets' 623 replies all score 0.0; the bundled model's greedy replies to the 24 demo
# held-out prompts score 0-0.12, and 0.22 for one that restates its opening; with the pirate system prompt,
# loops cut by a 64-token budget score 0.29 ("Second, you should know the job, the company, and the role.
# Third, you should know the job, ...") and full loops 0.45-0.93 ("Aye, aye, aye, ..."). 0.25 splits them.
LOOP_SHARE = 0.25
# Below this many n-grams a reply is too short to loop (a share of 1 in 3 is not a pattern).
MIN_NGRAMS = 6
DISTINCT_N = 2


def units(text: str) -> list[str]:
    """Lower-cased words (or CJK characters) of a text, punctuation dropped."""
    return _UNIT.findall(text.lower())


def _is_cjk(tokens: Sequence[str]) -> bool:
    """Whether most units are CJK characters (then n-grams are counted in characters)."""
    return bool(tokens) and sum(1 for t in tokens if _CJK.fullmatch(t)) * 2 > len(tokens)


def loop_n(text: str) -> int:
    """The n-gram length used to detect loops in this text (words, or characters for CJK)."""
    return LOOP_N_CJK if _is_cjk(units(text)) else LOOP_N_WORDS


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Consecutive n-grams of a token list."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_share(text: str, n: int | None = None) -> float:
    """Share of the text's n-grams that repeat an earlier n-gram of the same text (0: none, ~1: a loop)."""
    grams = ngrams(units(text), n or loop_n(text))
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def is_loop(text: str, threshold: float = LOOP_SHARE) -> bool:
    """Whether a reply is stuck in a loop: repeated n-gram share >= threshold, over enough n-grams."""
    n = loop_n(text)
    if len(units(text)) - n + 1 < MIN_NGRAMS:
        return False
    return repeated_ngram_share(text, n) >= threshold


def distinct_n(text: str, n: int = DISTINCT_N) -> float | None:
    """Distinct n-grams over all n-grams of one reply (1.0: no repeats); None when it has no n-gram."""
    grams = ngrams(units(text), n)
    if not grams:
        return None
    return len(set(grams)) / len(grams)


def ended_at_eot(completion_tokens: int, max_new_tokens: int) -> bool:
    """Whether generation stopped at end-of-turn rather than at the token limit.

    The generator cuts a reply at its first stop token, so a reply that used the whole budget hit the limit.
    """
    return completion_tokens < max_new_tokens


def strip_markers(text: str, markers: Sequence[re.Pattern[str]]) -> str:
    """The text with every persona marker match removed (and spaces tidied), so only content remains."""
    for marker in markers:
        text = marker.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


def length_ratio(reply: str, reference: str) -> float | None:
    """Reply length over reference length in units (words; characters for CJK); None without a reference."""
    ref = len(units(reference))
    if ref == 0:
        return None
    return len(units(reply)) / ref


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0 when either is all zeros)."""
    dot = float(sum(float(x) * float(y) for x, y in zip(a, b, strict=True)))
    na, nb = math.sqrt(sum(float(x) ** 2 for x in a)), math.sqrt(sum(float(y) ** 2 for y in b))
    return 0.0 if na == 0 or nb == 0 else dot / (na * nb)  # a plain float: reports are JSON


Embed = Callable[[list[str]], Sequence[Sequence[float]]]


def default_embed() -> Embed:
    """The offline all-MiniLM-L6-v2 sentence embedder (the one the style classifier uses)."""
    from finetune.compare.classifier import StyleClassifier

    return StyleClassifier().embed


def content_kept(
    replies: Sequence[str],
    references: Sequence[str | None],
    markers: Sequence[re.Pattern[str]] = (),
    embed: Embed | None = None,
) -> list[float | None]:
    """Sentence-embedding cosine of each reply to its reference, persona markers removed from both.

    Measures how much of the reference's content survives independent of voice (1: same meaning). None
    where there is no reference (or nothing but markers in it); 0.0 for a reply with nothing but markers
    (an empty answer keeps no content).
    """
    if len(replies) != len(references):
        raise ValueError(f"content_kept needs one reference per reply, got {len(replies)} and {len(references)}")
    pairs = [
        (_content(r, markers), _content(ref, markers)) if ref is not None else ("", "")
        for r, ref in zip(replies, references, strict=True)
    ]
    wanted = sorted({t for pair in pairs for t in pair if t and pair[0] and pair[1]})
    vectors = dict(zip(wanted, (embed or default_embed())(wanted), strict=True)) if wanted else {}
    return [(cosine(vectors[a], vectors[b]) if a else 0.0) if b else None for a, b in pairs]


def _content(text: str, markers: Sequence[re.Pattern[str]]) -> str:
    """The text without persona markers, or '' when no word is left (', !' carries no content)."""
    stripped = strip_markers(text, markers)
    return stripped if units(stripped) else ""


def reply_quality(text: str, completion_tokens: int, max_new_tokens: int) -> dict[str, float | None]:
    """The voice-independent per-reply scores compare records: loop, repeated share, distinct-2, ended."""
    return {
        "loop": 1.0 if is_loop(text) else 0.0,
        "repeated_share": repeated_ngram_share(text),
        "distinct_2": distinct_n(text),
        "ended": 1.0 if ended_at_eot(completion_tokens, max_new_tokens) else 0.0,
    }
