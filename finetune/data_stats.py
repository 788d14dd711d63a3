"""Token statistics of a dataset under a recipe's tokenizer (for `finetune data check`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.data import (
    DataReport,
    column,
    dropped_lines,
    length_stats,
    mark_trained,
    tokenize_rows,
    trained_segments,
)
from finetune.recipe import BUNDLED_DEFAULT, Recipe, load_recipe


def token_stats(report: DataReport, recipe_path: Path | None) -> dict[str, Any]:
    """p50/p95/max token lengths, the total, and how many rows max_length truncates."""
    from finetune.models import load_tokenizer

    if recipe_path is not None:
        recipe = load_recipe(recipe_path)
    else:
        recipe = Recipe.model_validate({"name": "check", "dataset": {"path": str(report.path)}})
    tokenizer = load_tokenizer(recipe)
    max_length = recipe.dataset.max_length
    # Training's own tokenisation and cache (a check before `train` makes train's tokenisation a cache hit);
    # the statistics are of the uncut rows.
    tokens = tokenize_rows(tokenizer, report.conversations, max_length)
    lengths = column(tokens, "full_length").tolist()
    return {
        "dropped_lines": dropped_lines(tokens, report.conversations),
        **length_stats(lengths),
        "total": sum(lengths),
        "truncated": sum(1 for n in lengths if n > max_length),
        "max_length": max_length,
        "model": recipe.base_model if recipe_path else BUNDLED_DEFAULT,
        # The first row as the model sees it, trained tokens between ⟦ ⟧ (what the loss mask learns).
        "first_row": mark_trained(trained_segments(tokenizer, report.conversations[0].messages, max_length))
        if report.conversations
        else None,
    }
