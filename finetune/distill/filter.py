"""Choosing the best candidate per prompt with compare's own scorers: style, loops, end of turn, content."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any

from finetune.compare import quality
from finetune.compare.classifier import StyleClassifier
from finetune.compare.metrics import marker_hit


@dataclass(frozen=True)
class Thresholds:
    """What a candidate must reach to be kept (docs/distill.md explains each)."""

    min_style: float
    min_content: float
    loop_share: float = quality.LOOP_SHARE


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def cross_fitted_style(
    records: list[dict[str, Any]], classifier: StyleClassifier
) -> tuple[dict[tuple[int, int], float | None], list[dict[str, Any]]]:
    """Style probability of every candidate from a classifier that never saw its prompt.

    Two folds by prompt: persona candidates against the plain (unprompted) replies of one fold train the
    classifier that scores the other, so a candidate is never scored by a model fitted on itself.
    """
    scores: dict[tuple[int, int], float | None] = {}
    folds_info = []
    for fold in (0, 1):
        train = [r for i, r in enumerate(records) if i % 2 != fold]
        persona = [c["text"] for r in train for c in r["candidates"] if c["text"]]
        plain = [r["base"]["text"] for r in train if r["base"]["text"]]
        info = classifier.fit(persona, plain)
        folds_info.append({"fold": fold, **info})
        targets = [(i, j) for i, r in enumerate(records) if i % 2 == fold for j in range(len(r["candidates"]))]
        texts = [records[i]["candidates"][j]["text"] for i, j in targets]
        for key, value in zip(targets, classifier.score(texts) if info["available"] else [None] * len(texts)):
            scores[key] = value
    return scores, folds_info


def score_candidates(
    records: list[dict[str, Any]], markers: list[re.Pattern[str]], thresholds: Thresholds,
    classifier: StyleClassifier | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Scores and a verdict for every candidate; the best passing one per prompt is marked kept.

    Returns (one row per candidate, classifier info). A candidate passes when it does not loop, ended at
    end of turn, keeps the content of the plain reply (embedding cosine >= min_content) and its style
    score (mean of marker hit and classifier probability, whichever exist) is >= min_style.
    """
    classifier = classifier or StyleClassifier(seed=0)
    styles, folds = cross_fitted_style(records, classifier)
    flat = [(i, j, c) for i, r in enumerate(records) for j, c in enumerate(r["candidates"])]
    content = quality.content_kept(
        [c["text"] for _, _, c in flat], [records[i]["base"]["text"] or None for i, _, _ in flat], markers,
        embed=classifier.embed,
    )
    rows = []
    for (i, j, cand), kept_content in zip(flat, content, strict=True):
        text = cand["text"]
        marker = marker_hit(text, markers)
        style_p = styles.get((i, j))
        style = _mean([marker, style_p])
        loop = quality.is_loop(text, thresholds.loop_share)
        reasons = []
        if not text.strip():
            reasons.append("empty")
        if loop:
            reasons.append("loops")
        if not cand["ended"]:
            reasons.append("hit the token limit")
        if kept_content is not None and kept_content < thresholds.min_content:
            reasons.append(f"content {kept_content:.2f} < {thresholds.min_content}")
        if style is not None and style < thresholds.min_style:
            reasons.append(f"style {style:.2f} < {thresholds.min_style}")
        rows.append({
            "prompt_id": records[i]["prompt_id"], "candidate": j, "text": text,
            "marker": marker, "classifier": None if style_p is None else round(style_p, 4),
            "style": None if style is None else round(style, 4),
            "content_kept": None if kept_content is None else round(kept_content, 4),
            "loop": loop, "distinct_2": quality.distinct_n(text), "ended": cand["ended"],
            "completion_tokens": cand.get("completion_tokens"),
            "passed": not reasons, "reasons": reasons, "kept": False,
        })
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    for group in by_prompt.values():
        passing = [r for r in group if r["passed"]]
        if passing:
            best = max(passing, key=lambda r: (r["style"] or 0.0, r["content_kept"] or 0.0, -r["candidate"]))
            best["kept"] = True
    return rows, {"folds": folds}


def filter_effect(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean style, marker rate and content of all candidates against the kept ones (the filter's effect)."""

    def summary(subset: list[dict[str, Any]]) -> dict[str, Any]:
        def mean_of(key: str) -> float | None:
            values = [float(r[key]) for r in subset if r[key] is not None]
            return round(statistics.fmean(values), 4) if values else None

        return {"n": len(subset), "style": mean_of("style"), "classifier": mean_of("classifier"),
                "marker": mean_of("marker"), "content_kept": mean_of("content_kept"),
                "loop_share": mean_of("loop"), "ended_share": mean_of("ended")}

    return {"all_candidates": summary(rows), "kept": summary([r for r in rows if r["kept"]])}
