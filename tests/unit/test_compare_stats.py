"""compare's statistics, text metrics and analysis: pure functions, no model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from finetune.compare import analysis, stats
from finetune.compare.arms import parse_arms
from finetune.compare.metrics import compile_markers, first_last_thirds, marker_hit, split_sentences
from finetune.errors import FinetuneError

# --- bootstrap CI of a mean ---------------------------------------------------------------------


def test_bootstrap_mean_and_interval_bracket_the_sample_mean():
    values = [0.1, 0.4, 0.35, 0.8, 0.5, 0.45, 0.9, 0.2]
    est = stats.bootstrap_mean_ci(values, seed=1)
    assert est["n"] == 8
    assert est["mean"] == pytest.approx(np.mean(values))
    assert est["ci_low"] < est["mean"] < est["ci_high"]
    assert est == stats.bootstrap_mean_ci(values, seed=1)  # reproducible
    assert stats.bootstrap_mean_ci([], seed=1) == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    # one item: no interval (the report then reads "n=1: not enough data for a CI", never [0.70, 0.70])
    assert stats.bootstrap_mean_ci([0.7]) == {"mean": 0.7, "ci_low": None, "ci_high": None, "n": 1}
    from finetune.compare.report import fmt_estimate
    from finetune.compare.schema import Estimate

    assert fmt_estimate(Estimate(**stats.bootstrap_mean_ci([0.7]))) == "0.70 (n=1: not enough data for a CI)"
    assert stats.bootstrap_mean_ci([1.0, None, float("nan"), 0.0])["n"] == 2  # missing scores are skipped


def test_interval_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = stats.bootstrap_mean_ci(rng.normal(size=20).tolist(), seed=0)
    large = stats.bootstrap_mean_ci(rng.normal(size=500).tolist(), seed=0)
    assert large["ci_high"] - large["ci_low"] < (small["ci_high"] - small["ci_low"]) / 2


@pytest.mark.parametrize("draw", ["normal", "bernoulli"])
def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time(draw):
    # Simulation: many samples from a known distribution; the 95% CI should contain the true mean in
    # roughly 95% of them (percentile bootstrap runs a little narrow at small n, so allow 0.88-0.99).
    rng = np.random.default_rng(123)
    trials, n, covered = 300, 40, 0
    true_mean = 0.3
    for trial in range(trials):
        if draw == "normal":
            sample = rng.normal(true_mean, 1.0, size=n)
        else:
            sample = (rng.random(n) < true_mean).astype(float)
        est = stats.bootstrap_mean_ci(sample.tolist(), seed=trial, n_boot=1000)
        covered += est["ci_low"] <= true_mean <= est["ci_high"]
    coverage = covered / trials
    assert 0.88 <= coverage <= 0.99, coverage


def test_a_90_percent_interval_is_narrower_and_covers_less():
    values = np.random.default_rng(5).normal(size=60).tolist()
    wide = stats.bootstrap_mean_ci(values, seed=0, level=0.95)
    narrow = stats.bootstrap_mean_ci(values, seed=0, level=0.90)
    assert wide["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < wide["ci_high"]


# --- paired differences ---------------------------------------------------------------------------


def test_paired_difference_sees_a_small_consistent_shift_that_unpaired_intervals_miss():
    # Prompts vary a lot in difficulty; arm a is better by 0.05 on every prompt.
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 1, size=40)
    a = (base + 0.05 + rng.normal(0, 0.01, size=40)).tolist()
    b = base.tolist()
    diff = stats.paired_difference(a, b, seed=0)
    assert diff["mean"] == pytest.approx(np.mean(np.array(a) - np.array(b)))
    assert stats.significant(diff)
    # Separately, the two arms' intervals overlap: only pairing reveals the difference.
    assert stats.intervals_overlap(stats.bootstrap_mean_ci(a), stats.bootstrap_mean_ci(b))


def test_paired_difference_of_identical_arms_is_zero_and_not_significant():
    values = [0.2, 0.9, 0.4, 0.6]
    diff = stats.paired_difference(values, values)
    assert diff["mean"] == 0 and diff["ci_low"] == 0 and diff["ci_high"] == 0
    assert not stats.significant(diff)


def test_paired_difference_requires_pairs():
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_difference([1.0, 2.0], [1.0])
    assert stats.paired_difference([1.0, None, 3.0], [0.0, 1.0, 1.0])["n"] == 2  # unpaired items dropped


def test_significance_and_overlap_rules():
    assert stats.significant({"mean": 0.3, "ci_low": 0.1, "ci_high": 0.5, "n": 10})
    assert stats.significant({"mean": -0.3, "ci_low": -0.5, "ci_high": -0.1, "n": 10})
    assert not stats.significant({"mean": 0.1, "ci_low": -0.1, "ci_high": 0.3, "n": 10})
    # One item proves nothing, nor do four: a bootstrap of so few understates their spread.
    assert not stats.significant({"mean": 0.3, "ci_low": 0.3, "ci_high": 0.3, "n": 1})
    assert not stats.significant({"mean": 0.3, "ci_low": 0.2, "ci_high": 0.4, "n": 4})
    assert stats.significant({"mean": 0.6, "ci_low": 0.5, "ci_high": 0.7, "n": 9}, null=1.0)
    assert not stats.intervals_overlap({"ci_low": 0.6, "ci_high": 0.9}, {"ci_low": 0.1, "ci_high": 0.5})
    assert stats.intervals_overlap({"ci_low": 0.4, "ci_high": 0.9}, {"ci_low": 0.1, "ci_high": 0.5})


def test_exp_estimate_maps_log_scale_interval_to_ratios():
    est = stats.exp_estimate({"mean": math.log(2), "ci_low": math.log(1.5), "ci_high": math.log(3), "n": 5})
    assert est["mean"] == pytest.approx(2) and est["ci_low"] == pytest.approx(1.5)
    assert est["ci_high"] == pytest.approx(3) and est["n"] == 5


def test_group_means_average_within_each_conversation():
    means = stats.group_means([1.0, 0.0, 1.0, None, 0.5], ["c1", "c1", "c2", "c2", "c3"])
    assert means == {"c1": 0.5, "c2": 1.0, "c3": 0.5}


# --- verdict wording ------------------------------------------------------------------------------


def est(mean, low, high, n=40):
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n}


def test_verdict_names_the_winner_with_a_positive_margin():
    assert stats.verdict("style", "adapter", "prompt", est(0.41, 0.30, 0.52)) == (
        "adapter beats prompt on style by 0.41 [0.30, 0.52], n=40"
    )
    # a is worse: the sentence names b first and the margin stays positive.
    assert stats.verdict("style", "adapter", "prompt", est(-0.2, -0.3, -0.1)) == (
        "prompt beats adapter on style by 0.20 [0.10, 0.30], n=40"
    )


def test_verdict_for_lower_is_better_metrics():
    # Latency-like difference: a is lower, so a wins.
    line = stats.verdict("latency", "adapter", "prompt", est(-0.5, -0.7, -0.3), higher_is_better=False)
    assert line == "adapter beats prompt on latency by 0.50 [0.30, 0.70], n=40"
    line = stats.verdict("latency", "adapter", "prompt", est(0.5, 0.3, 0.7), higher_is_better=False)
    assert line == "prompt beats adapter on latency by 0.50 [0.30, 0.70], n=40"


def test_verdict_for_ratios_either_way():
    line = stats.verdict(
        "perplexity", "adapter", "prompt", est(0.62, 0.55, 0.70), higher_is_better=False, ratio=True
    )
    assert line == "adapter beats prompt on perplexity: 0.62x of prompt's [0.55, 0.70], n=40"
    line = stats.verdict(
        "perplexity", "adapter", "prompt", est(1.25, 1.10, 1.40), higher_is_better=False, ratio=True
    )
    assert line == "prompt beats adapter on perplexity: 0.80x of adapter's [0.71, 0.91], n=40"
    line = stats.verdict(
        "perplexity", "adapter", "prompt", est(0.95, 0.85, 1.05), higher_is_better=False, ratio=True
    )
    assert line.startswith("no significant difference between adapter and prompt in perplexity (")
    assert "0.95x [0.85, 1.05]" in line


def test_verdict_when_not_significant_or_no_data():
    line = stats.verdict("multiple-choice accuracy", "adapter", "prompt", est(0.03, -0.05, 0.10, n=20))
    assert line == (
        "no significant difference between adapter and prompt in multiple-choice accuracy "
        "(adapter vs prompt: +0.03 [-0.05, 0.10], n=20)"
    )
    line = stats.verdict("style", "adapter", "prompt", est(-0.03, -0.10, 0.05, n=20))
    assert "no significant difference" in line and "-0.03 [-0.10, 0.05]" in line
    assert stats.verdict("style", "a", "b", est(None, None, None, 0)) == "style: no data to compare a and b"
    line = stats.verdict("style", "adapter", "prompt", est(0.4, 0.3, 0.5, n=3))
    assert (
        line
        == "too few items to compare adapter and prompt on style (adapter vs prompt: +0.40 [0.30, 0.50], n=3)"
    )


def test_drift_verdict_holds_falls_rises():
    first, last = est(0.9, 0.8, 1.0, 10), est(0.5, 0.3, 0.7, 10)
    line = stats.drift_verdict(
        "prompt", "over the conversation", "turn 1", "turn 6", first, last, est(-0.4, -0.6, -0.2, 10)
    )
    assert line == (
        "prompt: style over the conversation 0.90 at turn 1 -> 0.50 at turn 6: "
        "falls by 0.40 ([-0.60, -0.20], n=10)"
    )
    line = stats.drift_verdict(
        "adapter", "in long answers", "first third", "last third", last, first, est(0.4, 0.2, 0.6, 10)
    )
    assert "rises by 0.40" in line
    line = stats.drift_verdict(
        "adapter", "in long answers", "first third", "last third", first, first, est(0.01, -0.05, 0.07, 10)
    )
    assert line.endswith("holds (change +0.01 [-0.05, 0.07], n=10)")
    line = stats.drift_verdict(
        "prompt", "over the conversation", "turn 1", "turn 3", first, last, est(-0.4, -0.6, -0.2, 2)
    )
    assert line.endswith("too few items to tell (change -0.40 [-0.60, -0.20], n=2)")


# --- text metrics ---------------------------------------------------------------------------------

PIRATE = [r"\barr+\b", r"\bmatey\b", r"\bye\b", r"shiver me timbers", r"\byo-?ho"]


def test_marker_hits_are_case_insensitive_and_respect_word_boundaries():
    markers = compile_markers(PIRATE)
    assert marker_hit("ARRR, the tide be turnin'", markers) == 1.0
    assert marker_hit("Yo-ho, off we go", markers) == 1.0
    assert marker_hit("Yes, yesterday the yellow barrel arrived.", markers) == 0.0  # no whole-word hit
    assert marker_hit("anything", []) is None
    assert marker_hit("ですわ", compile_markers(["ですわ"])) == 1.0


def test_sentences_and_thirds_in_english_and_japanese():
    assert split_sentences("One. Two! Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert split_sentences("今日は晴れです。明日は雨ですわ。") == ["今日は晴れです。", "明日は雨ですわ。"]
    first, last = first_last_thirds("A one. B two. C three. D four. E five. F six.")
    assert first == "A one. B two." and last == "E five. F six."
    assert first_last_thirds("Only one sentence") == ("Only one sentence", "Only one sentence")
    assert first_last_thirds("") == ("", "")


# --- arms -----------------------------------------------------------------------------------------


def test_arms_parse_single_and_several_adapters():
    assert [a.name for a in parse_arms(None, ["pirate"])] == ["base", "prompt", "adapter", "adapter+prompt"]
    names = [a.name for a in parse_arms("base,adapter,adapter:b+prompt", ["a", "b"])]
    assert names == ["base", "adapter:a", "adapter:b", "adapter:b+prompt"]
    with pytest.raises(FinetuneError, match="unknown arm"):
        parse_arms("base,promt", ["a"])
    with pytest.raises(FinetuneError, match="needs --adapter"):
        parse_arms("adapter", [])
    with pytest.raises(FinetuneError, match="no adapter named 'c'"):
        parse_arms("adapter:c", ["a", "b"])
    for empty in ("", " , "):  # `--arms ''` (an unset shell variable) ran the default four arms
        with pytest.raises(FinetuneError, match="no arms given"):
            parse_arms(empty, ["a"])


# --- analysis: from per-item scores to report sections --------------------------------------------


def _scores(
    style: list[float], ppl: list[float], mc: list[float], multi: list[tuple[str, int, float]]
) -> dict:
    return {
        "single": [
            {
                "prompt_id": f"p{i}",
                "style": s,
                "marker": float(s > 0.5),
                "prompt_tokens": 30,
                "completion_tokens": 40,
                "latency_s": 1.0,
                "s_per_token": 0.02,
            }
            for i, s in enumerate(style)
        ],
        "multi": [{"prompt_id": c, "turn": t, "style": s, "marker": float(s > 0.5)} for c, t, s in multi],
        "long": [],
        "ppl": {f"p{i}": v for i, v in enumerate(ppl)},
        "mc": {"quiz": [{"id": str(i), "correct": c, "correct_sum": c} for i, c in enumerate(mc)]},
    }


def _fixture() -> dict:
    rng = np.random.default_rng(0)
    n = 30
    return {
        "base": _scores(
            rng.uniform(0.0, 0.2, n).tolist(),
            rng.normal(2.0, 0.1, n).tolist(),
            [1.0, 0.0] * 15,
            [(f"c{c}", t, 0.1) for c in range(6) for t in range(3)],
        ),
        "prompt": _scores(
            rng.uniform(0.4, 0.6, n).tolist(),
            rng.normal(2.0, 0.1, n).tolist(),
            [1.0, 0.0] * 15,
            [(f"c{c}", t, 0.8 - 0.3 * t) for c in range(6) for t in range(3)],
        ),
        "adapter": _scores(
            rng.uniform(0.8, 1.0, n).tolist(),
            rng.normal(1.5, 0.1, n).tolist(),
            [1.0, 0.0] * 15,
            [(f"c{c}", t, 0.9) for c in range(6) for t in range(3)],
        ),
    }


def test_analysis_estimates_differences_and_verdicts():
    scores, arms = _fixture(), ["base", "prompt", "adapter"]
    section = analysis.arm_section(scores, arms, seed=0)
    assert section["adapter"].style.n == 30
    assert section["adapter"].style_multi.n == 6  # clustered: one value per conversation
    assert section["base"].style_long is None  # no long prompts
    assert section["adapter"].perplexity.mean == pytest.approx(math.exp(1.5), rel=0.05)
    diffs = analysis.differences(scores, arms, ["quiz"], seed=0)
    style = next(d for d in diffs if d.metric == "style" and d.a == "adapter" and d.b == "prompt")
    assert style.significant and style.better == "adapter" and 0.3 < style.mean < 0.5
    ppl = next(d for d in diffs if d.metric == "perplexity" and d.a == "adapter" and d.b == "base")
    assert ppl.scale == "ratio" and ppl.mean < 1 and ppl.better == "adapter"
    quiz = next(d for d in diffs if d.metric == "mc:quiz" and d.a == "adapter" and d.b == "prompt")
    assert not quiz.significant and quiz.mean == 0
    lines = analysis.verdict_lines(diffs, arms, ["quiz"])
    assert lines[0].startswith("adapter beats prompt on style score by ")
    assert any(line.startswith("adapter beats prompt on held-out perplexity: ") for line in lines)
    assert any(
        "no significant difference between adapter and prompt in quiz multiple-choice accuracy" in line
        for line in lines
    )
    assert any(line.startswith("adapter beats base on style score") for line in lines)


def test_drift_by_turn_and_change():
    drift = analysis.drift_section(_fixture(), ["base", "prompt", "adapter"], seed=0)
    turns = drift.multi["prompt"].by_turn
    assert [t.turn for t in turns] == [0, 1, 2]
    assert turns[0].style.mean == pytest.approx(0.8) and turns[2].style.mean == pytest.approx(0.2)
    assert drift.multi["prompt"].change.mean == pytest.approx(-0.6)
    assert drift.multi["adapter"].change.mean == pytest.approx(0.0)
    lines = analysis.drift_lines(drift)
    assert any(
        line.startswith("prompt: style over the conversation 0.80 at turn 1 -> 0.20 at turn 3: falls")
        for line in lines
    )
    assert any(line.startswith("adapter: style over the conversation") and "holds" in line for line in lines)
    assert not any(line.startswith("base:") for line in lines)


def test_verdict_pairs_follow_the_arms_given():
    assert analysis.verdict_pairs(["base", "prompt"]) == [("prompt", "base", None)]
    pairs = analysis.verdict_pairs(["base", "prompt", "adapter", "adapter+prompt"])
    assert pairs[0] == ("adapter", "prompt", None)
    assert ("adapter+prompt", "adapter", ["style"]) in pairs
    assert analysis.verdict_pairs(["base", "adapter"]) == [("adapter", "base", None)]


# --- paired tests, Holm, power (issue 21) ----------------------------------------------------------


def _paired_samples(kind: str, rng: np.random.Generator, reps: int, n: int) -> tuple[np.ndarray, float]:
    """Synthetic paired per-prompt differences with a known true mean difference."""
    if kind == "normal":  # style-score-like differences
        return rng.normal(0.15, 0.3, size=(reps, n)), 0.15
    if kind == "binary":  # marker hit of arm a minus arm b: 0.6 vs 0.4 independent per prompt
        a, b = rng.random((reps, n)) < 0.6, rng.random((reps, n)) < 0.4
        return a.astype(float) - b.astype(float), 0.2
    # skewed scores in [0, 1] (most prompts near 0, a few high), as style probabilities often are
    return rng.beta(0.5, 2, size=(reps, n)) - rng.beta(0.3, 3, size=(reps, n)), 0.5 / 2.5 - 0.3 / 3.3


@pytest.mark.parametrize("kind", ["normal", "binary", "skewed"])
def test_paired_intervals_cover_a_known_difference_in_at_least_93_percent_at_n24(kind):
    # 1,000 synthetic paired samples of 24 prompts with a known difference: the 95% interval must
    # contain it in >= 93% of them (the bar; BCa managed 91-94% on these, hence the t-interval).
    rng = np.random.default_rng(2126)
    samples, truth = _paired_samples(kind, rng, 1000, 24)
    _, low, high, _ = stats.t_test_rows(samples)
    covered = int(((low <= truth) & (truth <= high)).sum())
    assert covered / 1000 >= 0.93, covered
    # The vectorised rows are exactly what compare computes per comparison.
    first = stats.paired_t(samples[0].tolist())
    assert (first["ci_low"], first["ci_high"]) == pytest.approx((low[0], high[0]))


@pytest.mark.parametrize("kind", ["normal", "binary"])
def test_holm_keeps_the_family_wise_error_at_5_percent_when_nothing_differs(kind):
    # Reports with 12 verdict tests on 24 prompts where the arms do not differ: the share of reports with
    # any significant verdict after Holm must stay <= 5% (uncorrected it is ~46%). Holm's own bound for 12
    # independent tests is 4.9%, so 1,000 repetitions (simulation error +-1.4 points) could not tell 4.9%
    # from 5%; 20,000 (+-0.3 points) can, and the limit allows that error and no more.
    rng = np.random.default_rng(7)
    reps, tests, n = 20_000, 12, 24
    if kind == "normal":  # scores: paired t-test
        _, _, _, p = stats.t_test_rows(rng.normal(0.0, 0.3, size=(reps, tests, n)))
    else:  # 0/1 outcomes (marker hit, loop): McNemar's exact test (the t-test here errs 5.9% of the time)
        a, b = rng.random((reps, tests, n)) < 0.3, rng.random((reps, tests, n)) < 0.3
        p = stats.mcnemar_rows(a.astype(float), b.astype(float))
    fwer = (stats.holm_rows(p) < 0.05).any(axis=-1).mean()
    assert fwer <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps), fwer
    assert (p < 0.05).any(axis=-1).mean() > 0.2  # why the correction is needed
    # The vectorised Holm is the one compare applies.
    for row in p[:20]:
        assert stats.holm(row.tolist()) == pytest.approx(stats.holm_rows(row[None, :])[0].tolist())


def test_holm_adjusts_in_order_and_skips_missing():
    assert stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert stats.holm([]) == []
    assert stats.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])


def test_mcnemar_counts_only_the_discordant_questions():
    # 6 questions only a got right, none only b: exact two-sided p = 2 x 0.5^6.
    a = [1] * 6 + [1, 0] * 5
    b = [0] * 6 + [1, 0] * 5
    assert stats.mcnemar_exact(a, b) == pytest.approx(2 * 0.5**6)
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0


def test_minimum_detectable_effect_and_items_needed_agree():
    mde = stats.min_detectable_effect(0.3, 24)
    assert 0.15 < mde < 0.2  # (t_.975 + t_.8) * 0.3 / sqrt(24)
    assert stats.items_needed(0.3, mde) == pytest.approx(24, abs=1)
    assert stats.min_detectable_effect(0.3, 96) < mde / 1.9  # four times the prompts, half the effect
    assert stats.min_detectable_effect(0.0, 24) is None


def test_bad_input_gives_not_enough_data_never_nan():
    # No replies, identical replies, and fewer items than an interval needs.
    empty = stats.paired_t([])
    assert empty["mean"] is None and empty["n"] == 0
    few = stats.paired_t([0.3, 0.5, 0.1])
    assert few["mean"] == pytest.approx(0.3) and few["ci_low"] is None and few["p_value"] is None
    line = stats.verdict("style score", "adapter", "prompt", few)
    assert line.startswith("not enough data to compare adapter and prompt on style score")
    same = stats.paired_t([0.0] * 24)
    assert same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0
    assert "no significant difference" in stats.verdict("style score", "a", "b", same)
    always = stats.paired_t([1.0] * 24)  # one arm always loops, the other never: a sign test decides
    assert always["p_value"] < 1e-6 and stats.significant(always)
    for est_ in (empty, few, same, always):
        assert not any(isinstance(v, float) and math.isnan(v) for v in est_.values())
    assert stats.wilson_ci([0.0] * 24) == {"mean": 0.0, "ci_low": 0.0, "ci_high": pytest.approx(0.138, abs=1e-3),
                                           "n": 24}
    assert stats.wilson_ci([]) == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}


# --- answer quality in the verdicts and the decision ------------------------------------------------


def _with_quality(scores: dict, loop_ids: set[str], content: float) -> dict:
    """Add quality fields to synthetic per-item scores: the listed prompts loop (and hit the token limit)."""
    for row in scores["single"]:
        looped = row["prompt_id"] in loop_ids
        row.update(loop=float(looped), ended=0.0 if looped else 1.0, distinct_2=0.3 if looped else 1.0,
                   content_ref=content - (0.3 if looped else 0.0), content_base=0.8, length_ratio=1.0)
    return scores


def _typed_report(scores: dict, arms: list[str], mc_sets: list[str]):
    """A whole report from per-item scores, as run_compare assembles it (settings filled with stand-ins)."""
    from finetune.compare.decision import decide
    from finetune.compare.schema import Classifier, Cost, Report, Settings

    diffs = analysis.differences(scores, arms, mc_sets, seed=0)
    drift = analysis.drift_section(scores, arms, seed=0)
    family = analysis.apply_holm(diffs, drift, arms, mc_sets)
    section = analysis.arm_section(scores, arms, seed=0)
    report = Report(
        schema_version=1, run="r", created_at="2026-12-02T10:00:00+00:00",
        settings=Settings(
            arms=arms, adapters={}, model="m", recipe="r.yaml", system_prompt="Be a pirate.",
            system_prompt_source="recipe", seed=0, do_sample=False, temperature=None,
            max_new_tokens=64, long_max_new_tokens=192, batch_size=16, turns=None, prompt_sets={},
            perplexity="", bootstrap={}, cache={}, device="cpu", dtype="fp32", versions={},
            statistics=analysis.statistics_settings(family),
        ),
        arms=section, differences=diffs, drift=drift,
        multiple_choice=analysis.mc_section(scores, arms, {name: (f"{name}.jsonl", 30, "mean") for name in mc_sets},
                                            seed=0),
        cost=Cost(price=None, system_prompt_tokens=40.0, adapters={}),
        classifier=Classifier(available=True, reason=None, embedder="e", n_train=48, n_test=16, accuracy=0.9),
        verdicts=analysis.quality_lines(section, arms) + analysis.verdict_lines(diffs, arms, mc_sets),
        warnings=[], timings={},
    )
    return report, decide(report)


def test_quality_moves_the_verdict_and_the_decision():
    arms = ["base", "prompt", "adapter"]
    ids = [f"p{i}" for i in range(30)]
    clean = _fixture()
    for arm in arms:
        _with_quality(clean[arm], set(), 0.8)
    report, decision = _typed_report(clean, arms, ["quiz"])
    assert not any(v.startswith("WARNING") for v in report.verdicts)
    assert decision.recommendation == "adapter", decision
    assert report.arms["adapter"].loop_share.mean == 0
    assert report.arms["adapter"].loop_share.ci_high > 0  # Wilson: 0 of 30 is not proof of never

    # Same style scores, but the adapter now loops in 12 of 30 replies (40%).
    looping = _fixture()
    for arm in arms:
        _with_quality(looping[arm], set(ids[:12]) if arm == "adapter" else set(), 0.8)
    report, decision = _typed_report(looping, arms, ["quiz"])
    warning = report.verdicts[0]
    assert warning.startswith("WARNING adapter: loops in 40% of replies"), warning
    assert "hit the token limit" in warning
    assert any(v.startswith("prompt beats adapter on loop share") for v in report.verdicts)
    assert decision.recommendation != "adapter"
    assert "LOOPS" in next(r.text for r in decision.reasons if r.topic == "quality")
    # Every verdict test is Holm-corrected, and the report says how many there were.
    assert report.settings.statistics["family_size"] >= 5
    assert all(d.p_holm is not None for d in report.differences
               if (d.a, d.b) == ("adapter", "prompt") and d.metric in ("style", "loop_share"))


def test_not_enough_evidence_asks_for_more_prompts():
    # Six prompts, a small noisy style gain for both arms: nothing is significant, so no arm qualifies and
    # the decision says how many more prompts would tell.
    base = np.array([0.1, 0.3, 0.2, 0.1, 0.3, 0.2])
    gain = np.array([0.3, -0.1, 0.2, 0.0, 0.25, -0.05])  # +0.10 on average, t = 1.5: not significant
    arms = ["base", "prompt", "adapter"]
    style = {"base": base, "prompt": base + gain, "adapter": base + gain[::-1]}
    scores = {arm: _scores(style[arm].tolist(), [2.0] * 6, [1.0, 0.0] * 3, []) for arm in arms}
    for arm in arms:
        _with_quality(scores[arm], set(), 0.8)
    report, decision = _typed_report(scores, arms, [])
    assert decision.recommendation == "not enough evidence", decision
    assert decision.more_prompts and decision.more_prompts >= 8
    assert f"{decision.more_prompts} more prompts" in decision.headline


@pytest.mark.parametrize("prompts", [1, 3])
def test_too_few_prompts_is_not_enough_evidence_not_a_fault(prompts):
    """One or three prompts where the adapter's single reply lost the content: no test runs on so few, so the
    decision neither voices nor faults any arm (it had read "Neither: adapter loses the answers' content")."""
    arms = ["base", "prompt", "adapter"]
    scores = _fixture()
    for arm in arms:
        scores[arm]["single"] = scores[arm]["single"][:prompts]
        scores[arm]["ppl"] = dict(list(scores[arm]["ppl"].items())[:prompts])
        _with_quality(scores[arm], set(), 0.05 if arm == "adapter" else 0.8)
    report, decision = _typed_report(scores, arms, [])
    assert decision.recommendation == "not enough evidence", decision.headline
    assert f"{prompts} paired prompt" in decision.headline and "at least 5" in decision.headline
    assert decision.more_prompts == 5 - prompts
    assert "loses content" not in next(r.text for r in decision.reasons if r.topic == "quality")
    if prompts == 1:
        cell = report.arms["adapter"].content_ref
        assert cell.n == 1 and cell.ci_low is None and cell.ci_high is None


def test_an_arm_with_no_replies_or_identical_replies_gives_stated_cells_not_nan():
    from finetune.compare.report import fmt_estimate, markdown

    arms = ["base", "prompt", "adapter"]
    scores = _fixture()
    for arm in arms:
        _with_quality(scores[arm], set(), 0.8)
    scores["adapter"]["single"] = [dict(r, style=0.5, marker=1.0) for r in scores["adapter"]["single"]]  # identical
    scores["prompt"]["single"] = scores["prompt"]["single"][:3]  # (almost) no replies
    report, decision = _typed_report(scores, arms, ["quiz"])
    text = json.dumps(report.model_dump(), allow_nan=False)  # a NaN or infinity anywhere raises
    assert "NaN" not in text and "Infinity" not in text
    few = next(d for d in report.differences if d.metric == "style" and {d.a, d.b} == {"adapter", "prompt"})
    assert few.n == 3 and few.ci_low is None
    assert "not enough data to compare adapter and prompt on style score" in " ".join(report.verdicts)
    assert "not enough data for a CI" in fmt_estimate(few)
    report.decision = decision
    md = markdown(report)
    assert md.splitlines()[2] == "## Adapter or prompt?"


def test_verdicts_in_any_arm_order_with_too_few_items_do_not_crash():
    # Arms given adapter first: differences are stored (prompt, adapter) and flipped for the verdict, even
    # when three items leave no interval to flip.
    scores = _fixture()
    for arm in scores:
        scores[arm]["single"] = scores[arm]["single"][:3]
        scores[arm]["ppl"] = dict(list(scores[arm]["ppl"].items())[:3])
    arms = ["adapter", "prompt", "base"]
    diffs = analysis.differences(scores, arms, [], seed=0)
    lines = analysis.verdict_lines(diffs, arms, [])
    wanted = "not enough data to compare adapter and prompt on held-out perplexity"
    assert any(line.startswith(wanted) for line in lines)


def test_only_shares_get_wilson_intervals_and_mcnemar():
    # distinct-2 of 1.0 on every reply is a score, not 30 successes: no Wilson interval, no McNemar.
    scores = _fixture()
    for arm in scores:
        _with_quality(scores[arm], set(), 0.8)
    section = analysis.arm_section(scores, ["base", "prompt", "adapter"], seed=0)
    assert section["adapter"].distinct_2.ci_low == 1.0  # the bootstrap of identical values
    assert section["adapter"].loop_share.ci_high > 0  # a share: Wilson
    diffs = analysis.differences(scores, ["base", "prompt", "adapter"], ["quiz"], seed=0)
    tests = {d.metric: d.test for d in diffs if (d.a, d.b) == ("adapter", "prompt")}
    assert tests["marker_rate"] == "mcnemar-exact" and tests["mc:quiz"] == "mcnemar-exact"
    assert tests["distinct_2"] == "sign" and tests["style"] == "paired-t"


def test_without_a_base_arm_the_decision_asks_for_it_instead_of_failing_both_arms():
    """`--arms prompt,adapter`: style and ability are judged against the base, so their absence is not a fault."""
    clean = _fixture()
    for arm in ("base", "prompt", "adapter"):
        _with_quality(clean[arm], set(), 0.8)
    report, decision = _typed_report(clean, ["prompt", "adapter"], ["quiz"])
    assert decision.recommendation == "not enough evidence", decision
    assert "add base to --arms" in decision.headline
    assert "does not carry the voice" not in decision.headline
    ability = next(r for r in decision.reasons if r.topic == "ability")
    assert ability.text == "not measured (no base arm)"


def test_the_decisions_ability_tests_are_holm_corrected_with_the_verdicts():
    """A multiple-choice loss read from one uncorrected test among many is not a loss (the demo's 'neither')."""
    arms = ["base", "prompt", "adapter"]
    n = 64

    def report_with_adapter_missing(k: int):
        scores = _fixture()
        for arm in arms:
            _with_quality(scores[arm], set(), 0.8)
            scores[arm]["mc"] = {"quiz": [{"id": str(i), "correct": 1.0, "correct_sum": 1.0} for i in range(n)]}
        for row in scores["adapter"]["mc"]["quiz"][:k]:  # the adapter gets k questions wrong that base gets right
            row.update(correct=0.0, correct_sum=0.0)
        return _typed_report(scores, arms, ["quiz"])

    # 6 one-way discordant questions: McNemar p = 2 * 0.5**6 = 0.031 alone, not significant after Holm.
    report, decision = report_with_adapter_missing(6)
    quiz = next(d for d in report.differences if d.metric == "mc:quiz" and {d.a, d.b} == {"adapter", "base"})
    assert quiz.p_value == pytest.approx(0.03125) and quiz.p_holm > 0.05 and not quiz.significant
    assert decision.recommendation == "adapter", decision
    ability = next(r for r in decision.reasons if r.topic == "ability").text
    assert "(lost)" not in ability and "Holm" in ability
    # 14 such questions survive the correction: the decision still says the adapter loses ability.
    report, decision = report_with_adapter_missing(14)
    assert decision.recommendation == "prompt", decision
    ability = next(r for r in decision.reasons if r.topic == "ability").text
    assert "adapter vs base on quiz -0.22" in ability and ability.count("(lost)") == 1


def test_a_better_voiced_but_unsound_adapter_plus_prompt_does_not_sink_a_sound_adapter():
    arms = ["base", "prompt", "adapter", "adapter+prompt"]
    scores = _fixture()
    rng = np.random.default_rng(1)
    scores["adapter+prompt"] = _scores(rng.uniform(0.95, 1.0, 30).tolist(), [1.5] * 30, [1.0, 0.0] * 15, [])
    single = scores["adapter"]["single"]
    scores["adapter"]["single"] = [dict(r, style=0.7 + 0.1 * (i % 2)) for i, r in enumerate(single)]
    ids = [f"p{i}" for i in range(30)]
    for arm in arms:
        _with_quality(scores[arm], set(ids[:15]) if arm in ("adapter+prompt", "prompt") else set(), 0.8)
    report, decision = _typed_report(scores, arms, [])
    pair = {"adapter", "adapter+prompt"}
    both_vs_adapter = next(d for d in report.differences if d.metric == "style" and {d.a, d.b} == pair)
    # adapter+prompt sounds more like the persona, but it (and the prompt) loops in half its replies
    assert both_vs_adapter.significant
    assert decision.recommendation == "adapter", decision
