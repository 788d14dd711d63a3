"""Statistics for compare: bootstrap confidence intervals, paired differences and verdict wording (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
# A bootstrap of a handful of items understates their spread: call nothing significant below this.
MIN_SIGNIFICANT_N = 5


def _none_estimate(n: int = 0) -> dict[str, Any]:
    """An estimate with no data behind it."""
    return {"mean": None, "ci_low": None, "ci_high": None, "n": n}


def bootstrap_mean_ci(
    values: Sequence[float], seed: int = 0, n_boot: int = N_BOOT, level: float = LEVEL
) -> dict[str, Any]:
    """Mean of `values` with a percentile-bootstrap confidence interval: {mean, ci_low, ci_high, n}.

    With one value the interval is that value (no spread can be estimated); with none, all are None.
    """
    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = int(data.size)
    if n == 0:
        return _none_estimate()
    mean = float(data.mean())
    if n == 1:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": 1}
    rng = np.random.default_rng(seed)
    # Draw all resamples at once: n_boot x n indices (fine for the few hundred items compare sees).
    idx = rng.integers(0, n, size=(n_boot, n))
    means = data[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return {"mean": mean, "ci_low": float(low), "ci_high": float(high), "n": n}


def paired_difference(
    a: Sequence[float], b: Sequence[float], seed: int = 0, n_boot: int = N_BOOT, level: float = LEVEL
) -> dict[str, Any]:
    """Mean of a[i] - b[i] over items both arms answered, with a bootstrap CI over items."""
    if len(a) != len(b):
        raise ValueError(f"paired values must have equal lengths, got {len(a)} and {len(b)}")
    diffs = [
        x - y
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))
    ]
    return bootstrap_mean_ci(diffs, seed=seed, n_boot=n_boot, level=level)


def group_means(values: Sequence[float | None], groups: Sequence[str]) -> dict[str, float]:
    """Mean value per group (e.g. per conversation), so a bootstrap resamples whole groups."""
    sums: dict[str, list[float]] = {}
    for value, group in zip(values, groups, strict=True):
        if value is not None and not math.isnan(value):
            sums.setdefault(group, []).append(value)
    return {g: sum(v) / len(v) for g, v in sums.items()}


def exp_estimate(estimate: dict[str, Any]) -> dict[str, Any]:
    """Map an estimate on the log scale to the ratio scale (exp is monotone, so the CI maps too)."""
    out = dict(estimate)
    for key in ("mean", "ci_low", "ci_high"):
        if out.get(key) is not None:
            out[key] = math.exp(out[key])
    return out


def significant(estimate: dict[str, Any], null: float = 0.0) -> bool:
    """Whether the CI excludes the null value (0 for differences, 1 for ratios), over enough items."""
    low, high = estimate.get("ci_low"), estimate.get("ci_high")
    if low is None or high is None or estimate.get("n", 0) < MIN_SIGNIFICANT_N:
        return False
    return low > null or high < null


def intervals_overlap(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """Whether two estimates' CIs overlap (None values count as overlapping: nothing is shown)."""
    if None in (x.get("ci_low"), x.get("ci_high"), y.get("ci_low"), y.get("ci_high")):
        return True
    return not (x["ci_low"] > y["ci_high"] or y["ci_low"] > x["ci_high"])


def format_number(value: float | None, digits: int = 2) -> str:
    """A number for a verdict line: fixed decimals, 'n/a' for None."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def verdict(
    metric: str,
    a: str,
    b: str,
    diff: dict[str, Any],
    higher_is_better: bool = True,
    ratio: bool = False,
    digits: int = 2,
) -> str:
    """One line saying which arm wins on a metric, by how much and with what CI, or that neither does.

    `diff` is the estimate of a - b (or a / b when `ratio`). The winner is named first and the
    margin is shown as a positive number (or a ratio below 1 for lower-is-better ratios).
    """
    if diff.get("mean") is None:
        return f"{metric}: no data to compare {a} and {b}"
    null = 1.0 if ratio else 0.0
    mean, low, high = diff["mean"], diff["ci_low"], diff["ci_high"]
    if not significant(diff, null):
        shown = f"{format_number(mean, digits)}x" if ratio else f"{mean:+.{digits}f}"
        interval = f"[{format_number(low, digits)}, {format_number(high, digits)}]"
        numbers = f"{a} vs {b}: {shown} {interval}, n={diff['n']}"
        if diff["n"] < MIN_SIGNIFICANT_N:
            return f"too few items to compare {a} and {b} on {metric} ({numbers})"
        return f"no significant difference between {a} and {b} in {metric} ({numbers})"
    a_better = (mean > null) == higher_is_better
    winner, loser = (a, b) if a_better else (b, a)
    if ratio:
        # Express the winner relative to the loser; flip the interval when the loser was in the numerator.
        if not a_better:
            mean, low, high = 1.0 / mean, 1.0 / high, 1.0 / low
        return (
            f"{winner} beats {loser} on {metric}: {format_number(mean, digits)}x of {loser}'s "
            f"[{format_number(low, digits)}, {format_number(high, digits)}], n={diff['n']}"
        )
    if mean < 0:  # show the winner's margin as a positive number
        mean, low, high = -mean, -high, -low
    return (
        f"{winner} beats {loser} on {metric} by {format_number(abs(mean), digits)} "
        f"[{format_number(low, digits)}, {format_number(high, digits)}], n={diff['n']}"
    )


def drift_verdict(
    arm: str,
    where: str,
    first_label: str,
    last_label: str,
    first: dict[str, Any],
    last: dict[str, Any],
    change: dict[str, Any],
    digits: int = 2,
) -> str:
    """One line on whether an arm's style holds from the start to the end (of a conversation or an answer).

    `change` is the paired estimate of last - first; it decides between "holds", "falls" and "rises".
    """
    if change.get("mean") is None or first.get("mean") is None or last.get("mean") is None:
        return f"{arm}: not enough data on style {where}"
    head = (
        f"{arm}: style {where} {format_number(first['mean'], digits)} at {first_label} -> "
        f"{format_number(last['mean'], digits)} at {last_label}"
    )
    low, high = format_number(change["ci_low"], digits), format_number(change["ci_high"], digits)
    if change["n"] < MIN_SIGNIFICANT_N:
        numbers = f"change {change['mean']:+.{digits}f} [{low}, {high}], n={change['n']}"
        return f"{head}: too few items to tell ({numbers})"
    if not significant(change):
        return f"{head}: holds (change {change['mean']:+.{digits}f} [{low}, {high}], n={change['n']})"
    direction = "falls" if change["mean"] < 0 else "rises"
    return f"{head}: {direction} by {abs(change['mean']):.{digits}f} ([{low}, {high}], n={change['n']})"
