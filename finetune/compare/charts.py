"""Charts for report.html: bars with CI whiskers per metric, and style drift, as base64 PNGs."""

from __future__ import annotations

import base64
import io
from typing import Any

from finetune.compare.analysis import METRICS
from finetune.compare.schema import Estimate, Report

PROPORTIONS = {"style", "marker_rate", "style_multi", "style_long"}
CHART_METRICS = [
    "style",
    "marker_rate",
    "perplexity",
    "style_multi",
    "style_long",
    "prompt_tokens",
    "latency_s",
]


def _plt() -> Any:
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    """A figure as base64 PNG text (the figure is closed)."""
    plt = _plt()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _bars(ax: Any, arms: list[str], estimates: list[Estimate | None], title: str, share: bool) -> None:
    """One panel: a bar per arm at its mean, whiskers from ci_low to ci_high."""
    means = [e.mean if e and e.mean is not None else 0.0 for e in estimates]
    lows = [m - e.ci_low if e and e.ci_low is not None else 0.0 for m, e in zip(means, estimates, strict=True)]
    highs = [e.ci_high - m if e and e.ci_high is not None else 0.0 for m, e in zip(means, estimates, strict=True)]
    colors = [f"C{i}" for i in range(len(arms))]
    ax.bar(range(len(arms)), means, yerr=[lows, highs], capsize=4, color=colors)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms, rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)
    if share:
        ax.set_ylim(0, 1.05)


def metric_chart(report: Report) -> str | None:
    """Bars with 95% CI whiskers for each metric that has data, plus multiple-choice accuracy per set."""
    arms = report.settings.arms
    labels = {m.key: m.label for m in METRICS}
    panels = []
    for key in CHART_METRICS:
        estimates = [getattr(report.arms[a], key) for a in arms]
        if any(e and e.mean is not None for e in estimates):
            panels.append((labels[key], estimates, key in PROPORTIONS))
    for name, mc in report.multiple_choice.items():
        panels.append((f"MC accuracy ({name})", [mc.arms[a].accuracy for a in arms], True))
    if not panels:
        return None
    plt = _plt()
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax, (title, estimates, share) in zip(axes.flat, panels, strict=False):
        _bars(ax, arms, estimates, title, share)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def drift_chart(report: Report) -> str | None:
    """Style by user turn in conversations, and first vs last third of long answers, per arm."""
    multi, long = report.drift.multi, report.drift.long
    if not multi and not long:
        return None
    plt = _plt()
    panels = int(bool(multi)) + int(bool(long))
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.4), squeeze=False)
    ax_iter = iter(axes.flat)
    if multi:
        ax = next(ax_iter)
        for i, (arm, conv) in enumerate(multi.items()):
            turns = [t.turn + 1 for t in conv.by_turn]
            means = [t.style.mean for t in conv.by_turn]
            # a turn of one conversation has no interval: its band is its mean
            lows = [t.style.mean if t.style.ci_low is None else t.style.ci_low for t in conv.by_turn]
            highs = [t.style.mean if t.style.ci_high is None else t.style.ci_high for t in conv.by_turn]
            ax.plot(turns, means, "o-", color=f"C{i}", label=arm)
            ax.fill_between(turns, lows, highs, color=f"C{i}", alpha=0.15)
        ax.set_xticks(sorted({t.turn + 1 for c in multi.values() for t in c.by_turn}))
        ax.set_xlabel("user turn")
        ax.set_ylabel("style score")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("style over a conversation (95% CI)", fontsize=9)
        ax.legend(fontsize=7)
    if long:
        ax = next(ax_iter)
        arms = list(long)
        width = 0.38
        for offset, part, label in (
            (-width / 2, "first_third", "first third"),
            (width / 2, "last_third", "last third"),
        ):
            est = [getattr(long[a], part).style for a in arms]
            means = [e.mean or 0.0 for e in est]
            err = [
                [m - (e.ci_low if e.ci_low is not None else m) for m, e in zip(means, est, strict=True)],
                [(e.ci_high if e.ci_high is not None else m) - m for m, e in zip(means, est, strict=True)],
            ]
            ax.bar([i + offset for i in range(len(arms))], means, width, yerr=err, capsize=3, label=label)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title("style in long answers: first vs last third", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
