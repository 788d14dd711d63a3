"""compare's time budget: predicted seconds from measured rates, and the sizes that fit (finetune/compare/budget.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from finetune.compare.arms import parse_arms
from finetune.compare.budget import (
    FACTOR_RANGE,
    FLOORS,
    LEARN_FILE,
    LEAVE_OUT,
    PARTS,
    Rates,
    Sizes,
    Work,
    fit,
    generation_s,
    learned,
    left_out,
    mc_tokens,
    predict,
    remember,
    scoring_tokens,
)
from finetune.compare.stats import MIN_SIGNIFICANT_N

RATES = Rates(prefill_tokens_s=1000.0, score_tokens_s=500.0, step_s=0.04, step_per_row_s=0.002,
              adapter_factor=1.5, mixed_factor=1.25, embed_text_s=0.01)
FULL = Sizes(singles=48, conversations=8, long=8, mc=100, classifier=96)


def work(**overrides) -> Work:
    """Four arms over sets of FULL's sizes, prompts 40 tokens (80 with the system prompt)."""
    fields = dict(
        arms=parse_arms("base,prompt,adapter,adapter+prompt", ["run"]),
        batch_size=16,
        max_new_tokens=64,
        long_max_new_tokens=192,
        singles={False: [40] * 48, True: [80] * 48},
        conversations={False: [[40, 140, 240]] * 8, True: [[80, 180, 280]] * 8},
        long={False: [50] * 8, True: [90] * 8},
        classifier=[40] * 96,
        references={False: [120] * 48, True: [160] * 48},
        # 100 questions of 48 prompt tokens after a shared head (12 tokens; 40 with the system prompt), 4 options
        # of 3 tokens each: 60 positions a question.
        mc={False: [[(48, [3, 3, 3, 3])] * 100], True: [[(48, [3, 3, 3, 3])] * 100]},
        mc_head={False: [12], True: [40]},
    )
    fields.update(overrides)
    return Work(**fields)


def test_a_batch_costs_its_prompt_tokens_and_its_steps():
    # 17 rows at batch 16: a batch of 16 and a batch of one, each padded to its own longest prompt.
    lengths = [10] * 16 + [100]
    expected = (16 * 10 / 1000 + 5 * (0.04 + 0.002 * 16)) + (1 * 100 / 1000 + 5 * (0.04 + 0.002 * 1))
    assert generation_s(RATES, lengths, 5, 16, "base") == pytest.approx(expected)
    # An adapter's steps cost its factor; a mixed batch both factors; prompt tokens cost the same.
    adapter = generation_s(RATES, [10], 5, 16, "adapter") - 10 / 1000
    mixed = generation_s(RATES, [10], 5, 16, "mixed") - 10 / 1000
    assert adapter == pytest.approx(5 * 0.042 * 1.5) and mixed == pytest.approx(5 * 0.042 * 1.5 * 1.25)


def test_every_part_grows_with_its_own_set():
    whole = predict(RATES, work(), FULL)
    assert all(seconds > 0 for seconds in whole.values())
    fewer_turns = predict(RATES, work(), Sizes(48, 4, 8, 100, 96))
    assert fewer_turns["shared"] < whole["shared"] and fewer_turns["single"] == whole["single"]
    fewer_questions = predict(RATES, work(), Sizes(48, 8, 8, 50, 96))
    assert fewer_questions["score"] < whole["score"] and fewer_questions["classifier"] == whole["classifier"]


def test_a_budget_the_whole_plan_fits_changes_nothing():
    total = sum(predict(RATES, work(), FULL).values())
    sizes, parts = fit(RATES, work(), FULL, total + 1)
    assert sizes == FULL and sum(parts.values()) == pytest.approx(total)


def test_a_short_budget_cuts_every_set_by_one_fraction_and_fits():
    total = sum(predict(RATES, work(), FULL).values())
    sizes, parts = fit(RATES, work(), FULL, total / 2)
    assert sum(parts.values()) <= total / 2
    assert sizes.singles < FULL.singles and sizes.mc < FULL.mc and sizes.classifier < FULL.classifier
    # One shared fraction: each set near the same share of its size (within the rounding of whole items).
    shares = [sizes.singles / FULL.singles, sizes.mc / FULL.mc, sizes.classifier / FULL.classifier]
    assert max(shares) - min(shares) < 0.1, shares
    # The largest such fraction: one more step up would no longer fit.
    step_up = Sizes(*(min(full, size + 2) for full, size in zip(
        (FULL.singles, FULL.conversations, FULL.long, FULL.mc, FULL.classifier),
        (sizes.singles, sizes.conversations, sizes.long, sizes.mc, sizes.classifier), strict=True)))
    assert sum(predict(RATES, work(), step_up).values()) > total / 2


def test_no_budget_goes_below_the_floors():
    sizes, parts = fit(RATES, work(), FULL, 1.0)
    # Every set that can reach a verdict stays at its floor; the drift sets, whose floor cannot, are left out.
    assert sizes == replace(Sizes(**FLOORS), long=0, conversations=0)
    assert left_out(FULL, sizes) == ["long", "conversations"]
    assert sum(parts.values()) > 1.0  # the caller warns: over the budget even at the smallest sets
    small = Sizes(singles=5, conversations=0, long=0, mc=10, classifier=24)  # asked for less than the floors
    assert fit(RATES, work(), small, 1.0)[0] == small


def test_over_at_the_floors_the_sets_without_a_verdict_go_long_answers_first():
    # The sets left out are those whose floor is below what a drift interval needs: no verdict is lost.
    assert all(FLOORS[name] < MIN_SIGNIFICANT_N for name in LEAVE_OUT)
    floors = Sizes(**FLOORS)
    at_floors = predict(RATES, work(), floors)
    without_long = predict(RATES, work(), replace(floors, long=0))
    # A budget between the two: the long answers go, the conversation stays, nothing goes below its floor.
    budget = (sum(at_floors.values()) + sum(without_long.values())) / 2
    sizes, parts = fit(RATES, work(), FULL, budget)
    assert sizes.long == 0 and sizes.conversations >= floors.conversations and sum(parts.values()) <= budget
    assert min(sizes.singles - floors.singles, sizes.mc - floors.mc, sizes.classifier - floors.classifier) >= 0
    assert left_out(FULL, sizes) == ["long"]
    # What leaving them out frees goes to the other sets, fitted again (one conversation asked: it cannot grow).
    one = replace(FULL, conversations=1)
    floors_one = predict(RATES, work(), replace(floors, long=0))
    roomy = sum(floors_one.values()) + 0.9 * (sum(at_floors.values()) - sum(floors_one.values()))
    sizes, parts = fit(RATES, work(), one, roomy)
    assert sizes.long == 0 and sizes.singles > floors.singles and sum(parts.values()) <= roomy
    # A budget the floors fit leaves out nothing.
    assert left_out(FULL, fit(RATES, work(), FULL, sum(at_floors.values()) + 0.01)[0]) == []


def test_work_already_cached_is_free():
    cached = work(cached=lambda what, arm, n: what == "classifier-base" or (what == "single" and not arm.adapter))
    free = predict(RATES, cached, FULL)
    paid = predict(RATES, work(), FULL)
    assert free["classifier"] == 0 and 0 < free["single"] < paid["single"]
    # What the cache saves is time to spend: a budget the uncached plan overruns fits it whole.
    budget = sum(free.values()) + 0.01
    assert budget < sum(paid.values()) and fit(RATES, cached, FULL, budget)[0] == FULL
    assert fit(RATES, work(), FULL, budget)[0] != FULL



def test_scores_already_cached_are_free():
    # The base and prompt arms' perplexity and multiple-choice scores come from the cache on a second compare.
    base_scores = work(cached=lambda what, arm, n: what in ("perplexity", "mc-0") and not arm.adapter)
    free, paid = predict(RATES, base_scores, FULL), predict(RATES, work(), FULL)
    # Four arms: base and prompt (no system prompt / with it) cached, adapter and adapter+prompt still paid.
    unpaid_tokens = (120 * 48 + 160 * 48) + (12 + 60 * 100) + (40 + 60 * 100)
    assert free["score"] == pytest.approx(unpaid_tokens / RATES.score_tokens_s)
    assert free["score"] < paid["score"] and free["single"] == paid["single"]
    only_perplexity = predict(RATES, work(cached=lambda what, arm, n: what == "perplexity"), FULL)
    assert only_perplexity["score"] == pytest.approx((4 * 60 * 100 + 2 * 12 + 2 * 40) / RATES.score_tokens_s)


def test_scoring_counts_every_padded_position_and_the_shared_head_once():
    # Rows sorted by length, each batch padded to its longest: [10, 20] and [30].
    assert scoring_tokens([30, 10, 20], 2) == 2 * 20 + 30
    # The head once; a batch's prompts padded to its longest (20), its options to the longest option (3).
    assert mc_tokens(5, [(10, [2, 3]), (20, [1, 1])], 16) == 5 + 2 * 20 + 4 * 3
    assert mc_tokens(5, [(10, [2, 3]), (20, [1, 1])], 1) == 5 + (10 + 2 * 3) + (20 + 2 * 1)
    assert mc_tokens(5, [], 16) == 0

def test_embedding_is_a_part_of_its_own_counted_per_text():
    # 96 classifier replies twice (persona, base); per arm each single reply twice (its style; unmarked, for
    # content), each of 8 x 3 conversation turns twice, each long answer 8 reply-lengths; the 48 references once.
    texts = 2 * 96 + 4 * (2 * 48 + 2 * 8 * 3 + 8 * 8) + 48
    assert predict(RATES, work(), FULL)["embed"] == pytest.approx(texts * RATES.embed_text_s)
    # Not cached across compares: a compare whose replies and scores all come from the cache still embeds them.
    everything_cached = work(cached=lambda what, arm, n: True)
    assert predict(RATES, everything_cached, FULL)["embed"] == pytest.approx(texts * RATES.embed_text_s)
    half = predict(RATES, work(), Sizes(24, 8, 8, 100, 96))["embed"]
    assert half == pytest.approx((texts - 4 * 2 * 24 - 24) * RATES.embed_text_s)


KEY = {"machine": "cpu|test", "model": "bundled:smollm2-135m-instruct", "dtype": "fp32"}


def test_learned_factors_are_the_median_of_the_latest_compares_of_the_same_kind():
    # Four compares here (the oldest falls out of the latest three), one of another model, one of another dtype.
    for ratio in (9.0, 1.2, 1.6, 1.3):  # median 1.3 (the mean would be 1.37)
        remember(KEY, dict.fromkeys(PARTS, 10.0), dict.fromkeys(PARTS, 10.0 * ratio), "r.json")
    remember({**KEY, "model": "other"}, dict.fromkeys(PARTS, 10.0), dict.fromkeys(PARTS, 50.0), "o.json")
    remember({**KEY, "dtype": "bf16"}, dict.fromkeys(PARTS, 10.0), dict.fromkeys(PARTS, 1.0), "b.json")
    factors, n = learned(KEY)
    assert n == 3 and factors == pytest.approx(dict.fromkeys(PARTS, 1.3))
    assert learned({**KEY, "machine": "cpu|elsewhere"}) == (dict.fromkeys(PARTS, 1.0), 0)


def test_a_part_too_short_to_time_teaches_nothing_and_wild_ratios_are_held():
    remember(KEY, {"single": 0.5, "shared": 10.0, "classifier": 10.0, "score": 10.0},
             {"single": 5.0, "shared": 100.0, "classifier": 1.0, "score": 12.0}, "r.json")
    factors, n = learned(KEY)
    assert n == 1
    assert factors == pytest.approx({"single": 1.0, "shared": FACTOR_RANGE[1], "classifier": FACTOR_RANGE[0],
                                     "score": 1.2, "embed": 1.0})  # embed: no record has it


def test_an_unreadable_record_file_means_nothing_learned(tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / LEARN_FILE).write_text("{not json")
    assert learned(KEY) == (dict.fromkeys(PARTS, 1.0), 0)
    remember(KEY, dict.fromkeys(PARTS, 10.0), dict.fromkeys(PARTS, 20.0), "r.json")  # and it is written anew
    assert learned(KEY) == (dict.fromkeys(PARTS, 2.0), 1)


def test_learned_factors_scale_the_prediction_and_the_fit():
    plain = predict(RATES, work(), FULL)
    factors = {"single": 2.0, "shared": 1.0, "classifier": 0.5, "score": 1.5, "embed": 1.0}
    scaled = predict(RATES, work(), FULL, factors)
    assert scaled == pytest.approx({part: plain[part] * factors[part] for part in PARTS})
    # A machine that measured twice the prediction fits smaller sets into the same seconds.
    seconds = sum(plain.values()) * 0.6
    sizes, parts = fit(RATES, work(), FULL, seconds)
    slower, slower_parts = fit(RATES, work(), FULL, seconds, dict.fromkeys(PARTS, 2.0))
    assert slower.singles < sizes.singles and sum(slower_parts.values()) <= seconds
