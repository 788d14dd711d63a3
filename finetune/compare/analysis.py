"""From per-item scores to the report's numbers: per-arm estimates, paired differences, drift, verdicts.

Input, per arm: {"single": [row], "multi": [row], "long": [row], "ppl": {reference id: log-perplexity},
"mc": {set name: [{"id", "correct", "correct_sum"}]}}. Rows carry `prompt_id` and the scores named
in METRICS. Output: the report's sections as schema models. No model is needed here, so every number in a
report can be recomputed from samples.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from finetune.compare import quality, stats
from finetune.compare.schema import (
    ArmMetrics,
    Difference,
    Drift,
    Estimate,
    LongDrift,
    MCArm,
    MCSet,
    MultiDrift,
    PairedEstimate,
    ThirdScores,
    TurnDrift,
)

Scores = dict[str, Any]


@dataclass(frozen=True)
class Metric:
    """A per-arm metric: where its per-item values come from and which direction is better."""

    key: str
    label: str
    source: str  # single | multi | long | ppl
    field: str | None
    higher_is_better: bool | None  # None: neither (e.g. reply length)
    log_scale: bool = False  # values are logs; estimates and differences are shown as exp (ratios)
    compared: bool = True  # paired differences and verdicts are computed
    share: bool = False  # 0/1 per item: Wilson interval per arm, McNemar's exact test between arms


METRICS = [
    Metric("style", "style score", "single", "style", True),
    Metric("marker_rate", "marker rate", "single", "marker", True, share=True),
    Metric("style_multi", "style score in conversations", "multi", "style", True),
    Metric("marker_rate_multi", "marker rate in conversations", "multi", "marker", True, share=True),
    Metric("style_long", "style score in long answers", "long", "style", True),
    Metric("marker_rate_long", "marker rate in long answers", "long", "marker", True, share=True),
    Metric("perplexity", "held-out perplexity", "ppl", None, False, log_scale=True),
    # Answer quality, independent of the voice (finetune/compare/quality.py; docs/compare.md).
    Metric("loop_share", "loop share", "single", "loop", False, share=True),
    Metric("loop_share_multi", "loop share in conversations", "multi", "loop", False, share=True),
    Metric("loop_share_long", "loop share in long answers", "long", "loop", False, share=True),
    Metric("distinct_2", "distinct-2", "single", "distinct_2", True),
    Metric("distinct_2_multi", "distinct-2 in conversations", "multi", "distinct_2", True),
    Metric("distinct_2_long", "distinct-2 in long answers", "long", "distinct_2", True),
    Metric("ended_share", "share ended at end-of-turn", "single", "ended", True, share=True),
    Metric("ended_share_multi", "share ended at end-of-turn in conversations", "multi", "ended", True, share=True),
    Metric("ended_share_long", "share of long answers ended at end-of-turn", "long", "ended", True, share=True),
    Metric("content_ref", "content kept (vs reference)", "single", "content_ref", True),
    Metric("content_base", "content kept (vs base reply)", "single", "content_base", True),
    Metric("content_base_multi", "content kept in conversations (vs base)", "multi", "content_base", True),
    Metric("content_base_long", "content kept in long answers (vs base)", "long", "content_base", True),
    Metric("length_ratio", "length / reference length", "single", "length_ratio", None, compared=False),
    Metric("prompt_tokens", "prompt tokens per request", "single", "prompt_tokens", False, compared=False),
    Metric(
        "completion_tokens", "generated tokens per reply", "single", "completion_tokens", None, compared=False
    ),
    Metric("latency_s", "latency per request (s)", "single", "latency_s", False, compared=False),
    Metric("s_per_token", "seconds per generated token", "single", "s_per_token", False, compared=False),
]
METRIC_KEYS = [m.key for m in METRICS]
HEADLINE = [
    "style",
    "marker_rate",
    "loop_share",
    "content_ref",
    "perplexity",
    "style_multi",
    "loop_share_multi",
    "style_long",
    "loop_share_long",
]
# An arm that loops in more than this share of its replies gets a warning line above every verdict: a
# style win built on stuck repetition is no win (issue 21). The demo's target is at most 10%.
LOOP_ALERT = 0.10
# Content kept more than this far below the prompt arm's counts against an adapter in the decision.
CONTENT_MARGIN = 0.10


def mc_label(name: str) -> str:
    """How a multiple-choice set's accuracy is named in verdicts."""
    return f"{name} multiple-choice accuracy"


def _seed(seed: int, *names: str) -> int:
    """A reproducible seed per (metric, arms) so resamples differ between metrics but not between runs."""
    return (seed * 1_000_003 + zlib.crc32("/".join(names).encode())) % 2**32


def item_values(arm_scores: Scores, metric: Metric) -> dict[str, float | None]:
    """Per-item values of a metric: one per prompt (multi-turn: one mean per conversation)."""
    if metric.source == "ppl":
        return dict(arm_scores.get("ppl") or {})
    rows = arm_scores.get(metric.source) or []
    if metric.source == "multi":
        return stats.group_means([r.get(metric.field) for r in rows], [r["prompt_id"] for r in rows])
    return {r["prompt_id"]: r.get(metric.field) for r in rows}


def estimate(
    values: dict[str, float | None], seed: int, log_scale: bool = False, share: bool = False
) -> Estimate:
    """Mean of per-item values with a 95% CI: Wilson for 0/1 shares, else a percentile bootstrap (exp'd back
    for log-scale metrics)."""
    present = [v for v in values.values() if v is not None]
    if share and stats.is_binary(present):
        return Estimate(**stats.wilson_ci(present))
    est = stats.bootstrap_mean_ci(present, seed=seed)
    return Estimate(**(stats.exp_estimate(est) if log_scale else est))


def paired(
    a: dict[str, float | None],
    b: dict[str, float | None],
    seed: int,
    log_scale: bool = False,
    share: bool = False,
) -> PairedEstimate:
    """Paired difference a - b over items both have, with a paired t-interval and p-value (a ratio a / b of
    geometric means for log-scale metrics: the test runs on the log differences)."""
    keys = [k for k in a if k in b and a[k] is not None and b[k] is not None]
    est = stats.paired_t([a[k] - b[k] for k in keys])
    va, vb = [a[k] for k in keys], [b[k] for k in keys]
    if not log_scale and est["ci_low"] is not None and all(0 <= v <= 1 for v in va + vb):
        # Scores in [0, 1] differ by at most 1: a t-interval past that bound only shows its symmetry.
        est["ci_low"], est["ci_high"] = max(-1.0, est["ci_low"]), min(1.0, est["ci_high"])
    if share and est["p_value"] is not None and stats.is_binary(va) and stats.is_binary(vb):
        # Paired 0/1 outcomes (marker hit, loop, right answer): McNemar's exact test is the right test and,
        # unlike the t-test on such coarse differences, keeps its error rate (docs/compare.md).
        est["p_value"] = stats.mcnemar_exact(va, vb)
        est["test"] = "mcnemar-exact"
    if log_scale:
        est = stats.exp_estimate(est)
        if est.get("mde") is not None:
            est["mde"] = math.exp(est["mde"])  # the smallest detectable ratio above 1
    return PairedEstimate(**est)  # p_holm stays unset: only the verdicts' and decision's tests get one


def arm_section(scores: dict[str, Scores], arms: list[str], seed: int) -> dict[str, ArmMetrics]:
    """Every metric per arm as an Estimate (None where the arm has no such items)."""
    out: dict[str, ArmMetrics] = {}
    for arm in arms:
        metrics = {}
        for metric in METRICS:
            values = item_values(scores[arm], metric)
            est = estimate(values, _seed(seed, metric.key, arm), metric.log_scale, metric.share)
            metrics[metric.key] = est if est.n else None
        out[arm] = ArmMetrics(**metrics)
    return out


def _mc_values(arm_scores: Scores, name: str, field: str = "correct") -> dict[str, float]:
    """Per-question correctness (1.0 or 0.0) of one multiple-choice set."""
    return {r["id"]: r[field] for r in (arm_scores.get("mc") or {}).get(name, [])}


def mc_section(
    scores: dict[str, Scores], arms: list[str], sets: dict[str, tuple[str, int, str]], seed: int
) -> dict[str, MCSet]:
    """Multiple-choice accuracy per set (name: (file, questions, scoring)) and arm, length-normalised and by
    summed log-probability."""
    out = {}
    for name, (file, n, scoring) in sets.items():
        per_arm = {
            arm: MCArm(
                accuracy=estimate(_mc_values(scores[arm], name), _seed(seed, "mc", name, arm), share=True),
                accuracy_sum=estimate(
                    _mc_values(scores[arm], name, "correct_sum"), _seed(seed, "mcs", name, arm), share=True
                ),
            )
            for arm in arms
        }
        out[name] = MCSet(file=file, n=n, scoring=scoring, arms=per_arm)
    return out


def _pairs(arms: list[str]) -> list[tuple[str, str]]:
    """Every pair of arms as (later, earlier) in --arms order: adapter vs base, not base vs adapter."""
    return [(arms[j], arms[i]) for i, j in combinations(range(len(arms)), 2)]


def differences(
    scores: dict[str, Scores], arms: list[str], mc_sets: list[str], seed: int
) -> list[Difference]:
    """Paired differences (a - b, or a / b for perplexity) for every pair of arms and compared metric."""
    out = []
    specs = [(m.key, m.label, m.higher_is_better, m.log_scale, m) for m in METRICS if m.compared]
    specs += [(f"mc:{name}", mc_label(name), True, False, None) for name in mc_sets]
    for key, label, higher, log_scale, metric in specs:
        share = metric is None or metric.share  # multiple choice: right/wrong per question
        for a, b in _pairs(arms):
            if metric is not None:
                va, vb = item_values(scores[a], metric), item_values(scores[b], metric)
            else:
                name = key.split(":", 1)[1]
                va, vb = _mc_values(scores[a], name), _mc_values(scores[b], name)
            est = paired(va, vb, _seed(seed, key, a, b), log_scale, share)
            if not est.n:
                continue
            null = 1.0 if log_scale else 0.0
            sig = stats.significant(est.model_dump(), null)
            better = None
            if sig:
                a_better = (est.mean > null) == higher
                better = a if a_better else b
            out.append(
                Difference(
                    metric=key,
                    label=label,
                    a=a,
                    b=b,
                    scale="ratio" if log_scale else "difference",
                    **est.model_dump(exclude_unset=True),
                    significant=sig,
                    better=better,
                    higher_is_better=higher,
                    p_holm=None,
                )
            )
    return out


def drift_section(scores: dict[str, Scores], arms: list[str], seed: int) -> Drift:
    """Style by user turn in conversations, and first vs last third of long answers, per arm."""
    multi: dict[str, MultiDrift] = {}
    long: dict[str, LongDrift] = {}
    for arm in arms:
        rows = scores[arm].get("multi") or []
        if rows:
            turns = sorted({r["turn"] for r in rows})
            by_turn = []
            for t in turns:
                at = [r for r in rows if r["turn"] == t]
                by_turn.append(
                    TurnDrift(
                        turn=t,
                        style=estimate({r["prompt_id"]: r.get("style") for r in at}, _seed(seed, "dm", arm, str(t))),
                        marker_rate=estimate(
                            {r["prompt_id"]: r.get("marker") for r in at},
                            _seed(seed, "dmm", arm, str(t)),
                            share=True,
                        ),
                    )
                )
            first = {r["prompt_id"]: r.get("style") for r in rows if r["turn"] == 0}
            last_turn = {}
            for r in rows:
                if r["turn"] >= last_turn.get(r["prompt_id"], (-1, None))[0]:
                    last_turn[r["prompt_id"]] = (r["turn"], r.get("style"))
            last = {k: v for k, (t, v) in last_turn.items() if t > 0}
            multi[arm] = MultiDrift(by_turn=by_turn, change=paired(last, first, _seed(seed, "dc", arm)))
        rows = scores[arm].get("long") or []
        if rows:

            def pick(field: str, rows: list[dict] = rows) -> dict[str, float | None]:
                return {r["prompt_id"]: r.get(field) for r in rows}

            long[arm] = LongDrift(
                first_third=ThirdScores(
                    style=estimate(pick("first_style"), _seed(seed, "lf", arm)),
                    marker_rate=estimate(pick("first_marker"), _seed(seed, "lfm", arm), share=True),
                ),
                last_third=ThirdScores(
                    style=estimate(pick("last_style"), _seed(seed, "ll", arm)),
                    marker_rate=estimate(pick("last_marker"), _seed(seed, "llm", arm), share=True),
                ),
                change=paired(pick("last_style"), pick("first_style"), _seed(seed, "lc", arm)),
            )
    return Drift(multi=multi, long=long)


def find_difference(diffs: list[Difference], metric: str, a: str, b: str) -> Difference | None:
    """The difference a vs b on a metric, whichever order it was computed in (a flipped copy if needed)."""
    for d in diffs:
        if d.metric != metric:
            continue
        if (d.a, d.b) == (a, b):
            return d
        if (d.a, d.b) == (b, a):

            def flip(x: float | None, ratio: bool = d.scale == "ratio") -> float | None:
                if x is None:  # too few items: no interval to flip
                    return None
                return 1 / x if ratio else -x

            return d.model_copy(
                update={"a": a, "b": b, "mean": flip(d.mean), "ci_low": flip(d.ci_high), "ci_high": flip(d.ci_low)}
            )
    return None


def verdict_pairs(arms: list[str]) -> list[tuple[str, str, list[str] | None]]:
    """Which comparisons get verdict lines: (a, b, metrics or None for all headline metrics)."""
    plain_adapters = [a for a in arms if a.startswith("adapter") and not a.endswith("+prompt")]
    pairs: list[tuple[str, str, list[str] | None]] = []
    for adapter in plain_adapters:
        if "prompt" in arms:
            pairs.append((adapter, "prompt", None))
            if "base" in arms:
                pairs.append((adapter, "base", ["style"]))
        elif "base" in arms:
            pairs.append((adapter, "base", None))
        if f"{adapter}+prompt" in arms:
            pairs.append((f"{adapter}+prompt", adapter, ["style"]))
    if "prompt" in arms and "base" in arms:
        pairs.append(("prompt", "base", ["style"] if plain_adapters else None))
    if not pairs:
        pairs = [(a, b, ["style"]) for a, b in _pairs(arms)]
    return pairs


def verdict_lines(diffs: list[Difference], arms: list[str], mc_sets: list[str]) -> list[str]:
    """The verdict per headline comparison and metric (metrics with no data are left out)."""
    labels = {m.key: m.label for m in METRICS}
    log_scale = {m.key: m.log_scale for m in METRICS}
    lines = []
    for a, b, metrics in verdict_pairs(arms):
        keys = metrics or [*HEADLINE, *(f"mc:{s}" for s in mc_sets)]
        for key in keys:
            d = find_difference(diffs, key, a, b)
            if d is None:
                continue
            label = labels.get(key) or mc_label(key.split(":", 1)[1])
            lines.append(
                stats.verdict(
                    label, a, b, d.model_dump(), higher_is_better=d.higher_is_better, ratio=log_scale.get(key, False)
                )
            )
    return lines


def drift_lines(drift: Drift) -> list[str]:
    """One line per arm (base excluded) on whether its voice holds over turns and over long answers."""
    lines = []
    for arm, conv in drift.multi.items():
        turns = conv.by_turn
        if arm == "base" or len(turns) < 2:
            continue
        lines.append(
            stats.drift_verdict(
                arm,
                "over the conversation",
                "turn 1",
                f"turn {turns[-1].turn + 1}",
                turns[0].style.model_dump(),
                turns[-1].style.model_dump(),
                conv.change.model_dump(),
            )
        )
    for arm, answers in drift.long.items():
        if arm == "base":
            continue
        lines.append(
            stats.drift_verdict(
                arm,
                "in long answers",
                "first third",
                "last third",
                answers.first_third.style.model_dump(),
                answers.last_third.style.model_dump(),
                answers.change.model_dump(),
            )
        )
    return lines


def _entry(diffs: list[Difference], metric: str, a: str, b: str) -> Difference | None:
    """The stored difference of a and b on a metric, in whichever order it was computed (not a copy)."""
    for d in diffs:
        if d.metric == metric and {d.a, d.b} == {a, b}:
            return d
    return None


def decision_pairs(arms: list[str], mc_sets: list[str]) -> list[tuple[str, str, list[str]]]:
    """The comparisons the "Adapter or prompt?" decision reads besides the verdicts': each candidate arm
    (plain adapters, prompt, adapter+prompt) against the base on the voice and on every multiple-choice set."""
    if "base" not in arms:
        return []
    candidates = [a for a in arms if a != "base"]
    return [(a, "base", ["style", "marker_rate", *(f"mc:{s}" for s in mc_sets)]) for a in candidates]


def verdict_family(diffs: list[Difference], drift: Drift, arms: list[str], mc_sets: list[str]) -> list[PairedEstimate]:
    """Every test a verdict line or the decision reads: the verdict comparisons, the decision's comparisons
    with the base, and the drift changes (the Holm family)."""
    family: list[PairedEstimate] = []
    # The decision's tests belong in the family too: "adapter loses multiple-choice ability" was read from an
    # uncorrected McNemar p among six such tests (3 arms x 2 sets) in the demo's report.
    for a, b, metrics in [*verdict_pairs(arms), *decision_pairs(arms, mc_sets)]:
        for key in metrics or [*HEADLINE, *(f"mc:{s}" for s in mc_sets)]:
            d = _entry(diffs, key, a, b)
            if d is not None and all(d is not f for f in family):
                family.append(d)
    for arm, conv in drift.multi.items():
        if arm != "base" and len(conv.by_turn) >= 2:
            family.append(conv.change)
    family += [answers.change for arm, answers in drift.long.items() if arm != "base"]
    return family


def apply_holm(diffs: list[Difference], drift: Drift, arms: list[str], mc_sets: list[str]) -> int:
    """Holm-correct the p-values of every verdict (family-wise error <= 5%); returns the family's size.

    Sets `p_holm` on each test in the family and re-decides `significant` and `better` from it; paired
    differences outside the verdicts keep their uncorrected p-value (the report says so).
    """
    family = verdict_family(diffs, drift, arms, mc_sets)
    adjusted = stats.holm([t.p_value if t.n >= stats.MIN_SIGNIFICANT_N else None for t in family])
    for test, p in zip(family, adjusted, strict=True):
        test.p_holm = p
        if isinstance(test, Difference):  # a difference between arms (drift changes have no winner)
            null = 1.0 if test.scale == "ratio" else 0.0
            test.significant = stats.significant(test.model_dump(), null)
            test.better = None
            if test.significant:
                a_better = (test.mean > null) == test.higher_is_better
                test.better = test.a if a_better else test.b
    return sum(1 for p in adjusted if p is not None)


QUALITY_SETS = [
    ("loop_share", "ended_share", "replies"),
    ("loop_share_multi", "ended_share_multi", "conversation replies"),
    ("loop_share_long", "ended_share_long", "long answers"),
]


def statistics_settings(family_size: int) -> dict[str, Any]:
    """How the report's intervals and tests were computed (settings.statistics)."""
    return {
        "per_arm": "Wilson score interval for shares (0/1 per item), percentile bootstrap for other means",
        "paired": "paired t-interval and t-test on per-item differences (log differences for perplexity); "
        "exact sign test when all differences are equal",
        "multiple_choice": "McNemar's exact test on paired 0/1 outcomes (marker hit, loop, ended, right answer)",
        "correction": "Holm over the verdicts' tests and the decision's comparisons with the base (voice, "
        "multiple choice); other paired differences are uncorrected",
        "family_size": family_size,
        "alpha": stats.ALPHA,
        "min_items": stats.MIN_SIGNIFICANT_N,
        "mde": f"smallest true difference a two-sided paired t-test at alpha {stats.ALPHA} finds with power "
        f"{stats.POWER}, from the observed spread",
        "loop": f"repeated {quality.LOOP_N_WORDS}-word ({quality.LOOP_N_CJK}-character CJK) n-gram share >= "
        f"{quality.LOOP_SHARE}",
    }


def _pct(value: float | None) -> str:
    """0.4 -> '40%'."""
    return "n/a" if value is None else f"{100 * value:.0f}%"


def quality_lines(section: dict[str, ArmMetrics], arms: list[str]) -> list[str]:
    """A WARNING line per arm that loops in more than LOOP_ALERT of its replies in any prompt set.

    These open the verdicts, so "wins on style but loops in 40% of replies" cannot be missed.
    """
    lines = []
    for arm in arms:
        parts = []
        for loop_key, ended_key, what in QUALITY_SETS:
            loop, ended = getattr(section[arm], loop_key), getattr(section[arm], ended_key)
            if not loop or loop.mean is None or loop.mean <= LOOP_ALERT:
                continue
            text = f"loops in {_pct(loop.mean)} of {what} [{_pct(loop.ci_low)}, {_pct(loop.ci_high)}], n={loop.n}"
            if ended and ended.mean is not None:
                text += f"; {_pct(1 - ended.mean)} hit the token limit"
            parts.append(text)
        if parts:
            lines.append(f"WARNING {arm}: " + "; ".join(parts) + " (its style and marker scores count the loops)")
    return lines
