"""Bradley-Terry ratings, bootstrap CIs and the leaderboard statistics of the arena."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from finetune.arena.ratings import (
    Vote,
    arm_stats,
    bootstrap_ci,
    bradley_terry,
    build_results,
    fit_strengths,
    leaderboard,
    outcome,
    pair_counts,
    style_agreement,
    win_matrix,
    win_rates,
)

TRUE = {"w": 1000.0, "x": 1100.0, "y": 1200.0, "z": 1300.0}


def simulate(n: int, rng: np.random.Generator, true: dict[str, float] = TRUE) -> list[Vote]:
    """Draw n votes between random arm pairs with Bradley-Terry win probabilities on the Elo scale."""
    arms = list(true)
    votes = []
    for _ in range(n):
        i, j = rng.choice(len(arms), size=2, replace=False)
        left, right = arms[i], arms[j]
        p_left = 1.0 / (1.0 + 10 ** ((true[right] - true[left]) / 400.0))
        votes.append(Vote(left, right, "a" if rng.random() < p_left else "b"))
    return votes


def centred(ratings: dict[str, float]) -> dict[str, float]:
    mean = sum(ratings.values()) / len(ratings)
    return {arm: value - mean for arm, value in ratings.items()}


def test_recovers_known_strengths() -> None:
    votes = simulate(2000, np.random.default_rng(7))
    est = bradley_terry(votes)
    assert sum(est.values()) / len(est) == pytest.approx(1000.0)  # mean anchored at 1000
    truth = centred(TRUE)
    for arm, value in centred(est).items():
        assert abs(value - truth[arm]) < 40, (arm, value, truth[arm])
    assert sorted(est, key=est.get) == ["w", "x", "y", "z"]


def test_named_anchor_pins_that_arm_at_1000() -> None:
    votes = simulate(2000, np.random.default_rng(3))
    mean_based = bradley_terry(votes)
    anchored = bradley_terry(votes, anchor="w")
    assert anchored["w"] == pytest.approx(1000.0)
    for arm in TRUE:  # anchoring only shifts: differences stay the same
        assert anchored[arm] - anchored["w"] == pytest.approx(mean_based[arm] - mean_based["w"])
    with pytest.raises(ValueError, match="anchor"):
        bradley_terry(votes, anchor="nobody")


def test_fit_is_the_maximum_likelihood_point() -> None:
    """At the fitted strengths, each arm's (fractional) wins equal its expected wins, prior included."""
    votes = simulate(300, np.random.default_rng(1)) + [Vote("w", "z", "tie"), Vote("x", "y", "bad")]
    arms = ["w", "x", "y", "z"]
    wins = win_matrix(votes, arms) + 0.5 * (1 - np.eye(4))  # the one virtual tie per pair
    theta = fit_strengths(win_matrix(votes, arms))
    p = 1 / (1 + np.exp(-(theta[:, None] - theta[None, :])))
    expected = ((wins + wins.T) * p).sum(axis=1)
    np.testing.assert_allclose(wins.sum(axis=1), expected, atol=1e-8)


def test_ties_count_half_and_both_bad_is_a_tie() -> None:
    assert [outcome(c) for c in ("a", "b", "tie", "bad")] == [1.0, 0.0, 0.5, 0.5]
    with pytest.raises(ValueError):
        outcome("left")
    only_ties = [Vote("p", "q", "tie")] * 10
    r = bradley_terry(only_ties)
    assert r["p"] == pytest.approx(r["q"])
    with_tie = bradley_terry([Vote("p", "q", "a")] * 6 + [Vote("q", "p", "tie")] * 4)
    with_bad = bradley_terry([Vote("p", "q", "a")] * 6 + [Vote("q", "p", "bad")] * 4)
    assert with_tie == pytest.approx(with_bad)
    # 6 wins + 4 ties = 8 of 10 for p; one virtual tie makes it 8.5 of 11.
    assert with_tie["p"] - with_tie["q"] == pytest.approx(400 * math.log10(8.5 / 2.5), abs=1e-6)


def test_unbeaten_arm_gets_finite_ratings() -> None:
    """An arm that never loses would have infinite MLE strength; the virtual ties keep it finite."""
    votes = [Vote("champ", "b", "a")] * 30 + [Vote("b", "champ", "b")] * 30 + [Vote("b", "c", "a")] * 10
    votes += [Vote("d", "e", "a")] * 5  # d and e never meet the others: the prior still joins them
    ratings = bradley_terry(votes)
    assert all(math.isfinite(v) for v in ratings.values())
    assert max(ratings, key=ratings.get) == "champ"
    cis = bootstrap_ci(votes, rounds=200)
    assert all(math.isfinite(lo) and math.isfinite(hi) and lo <= hi for lo, hi in cis.values())


def test_bootstrap_ci_covers_truth_most_of_the_time() -> None:
    rng = np.random.default_rng(2024)
    truth = centred(TRUE)
    covered = total = 0
    for repeat in range(30):
        votes = simulate(600, rng)
        cis = bootstrap_ci(votes, rounds=400, seed=repeat)
        for arm, (lo, hi) in cis.items():
            # CIs are for mean-anchored ratings; compare against the true mean-anchored values.
            covered += lo - 1000 <= truth[arm] <= hi - 1000
            total += 1
    assert covered / total >= 0.8, f"95% CIs covered the truth in only {covered}/{total}"


def test_bootstrap_is_seeded() -> None:
    votes = simulate(200, np.random.default_rng(5))
    assert bootstrap_ci(votes, rounds=100, seed=1) == bootstrap_ci(votes, rounds=100, seed=1)
    assert bootstrap_ci(votes, rounds=100, seed=1) != bootstrap_ci(votes, rounds=100, seed=2)


def test_counts_win_rates_and_pairs() -> None:
    votes = [
        Vote("p", "q", "a"),
        Vote("q", "p", "a"),
        Vote("p", "q", "tie"),
        Vote("p", "r", "bad"),
        Vote("r", "p", "b"),
    ]
    rates = win_rates(votes)
    assert rates["p"]["q"] == pytest.approx(0.5)  # 1 win, 1 loss, 1 tie
    assert rates["p"]["r"] == pytest.approx(0.75)  # 1 win, 1 both-bad (a tie)
    assert rates["q"]["r"] is None  # never met
    assert pair_counts(votes) == [
        {"arms": ["p", "q"], "votes": 3, "wins": {"p": 1, "q": 1}, "ties": 1, "both_bad": 0},
        {"arms": ["p", "r"], "votes": 2, "wins": {"p": 1, "r": 0}, "ties": 0, "both_bad": 1},
    ]
    assert arm_stats(votes)["p"] == {"votes": 5, "wins": 2, "losses": 1, "ties": 1, "both_bad": 1}


def test_style_agreement_counts_only_decisive_votes_with_both_scores() -> None:
    votes = [
        Vote("p", "q", "a", 0.9, 0.2),  # agrees
        Vote("p", "q", "b", 0.9, 0.2),  # disagrees
        Vote("p", "q", "b", 0.1, 0.7),  # agrees
        Vote("p", "q", "tie", 0.9, 0.2),  # not decisive
        Vote("p", "q", "bad", 0.9, 0.2),  # not decisive
        Vote("p", "q", "a", None, 0.2),  # a score missing
        Vote("p", "q", "a", 0.5, 0.5),  # scores equal: no higher side
    ]
    result = style_agreement(votes)
    assert (result["votes"], result["agreed"]) == (3, 2)
    assert result["rate"] == pytest.approx(2 / 3)
    lo, hi = result["ci95"]
    assert 0 < lo < 2 / 3 < hi < 1
    assert style_agreement([])["rate"] is None


def test_leaderboard_and_grouping_by_folder_and_criterion() -> None:
    votes = simulate(400, np.random.default_rng(11))
    board = leaderboard(votes, criterion="style", rounds=100)
    assert [row["arm"] for row in board["arms"]] == ["z", "y", "x", "w"]
    for row in board["arms"]:
        assert row["ci95"][0] <= row["rating"] <= row["ci95"][1]
    assert board["style_agreement"] is not None
    assert leaderboard(votes, criterion="quality", rounds=10)["style_agreement"] is None

    rows = []
    for source, criterion in (("/c/one", "style"), ("/c/two", "style"), ("/c/one", "quality")):
        for k, v in enumerate(votes[:50]):
            rows.append(
                {"source": source, "run": "r", "criterion": criterion, "rater": f"u{k % 3}",
                 "arm_left": v.left, "arm_right": v.right, "choice": v.choice,
                 "style_left": None, "style_right": None}
            )
    results = build_results(rows, rounds=50, anchor="w")
    keys = [(b["source"], b["criterion"]) for b in results["boards"]]
    assert keys == [("/c/one", "quality"), ("/c/one", "style"), ("/c/two", "style")]
    for b in results["boards"]:
        assert (b["votes"], b["raters"], b["name"]) == (50, 3, Path(b["source"]).name)
    assert {row["arm"]: row["rating"] for row in results["boards"][0]["arms"]}["w"] == 1000.0
    assert results["method"]["both_bad"] == "counted as a tie"


@pytest.mark.parametrize(
    "votes",
    [
        [Vote("adapter", "base", "a")],  # one vote
        [Vote("adapter", "base", "tie")],  # one tie
        [Vote("adapter", "base", "a"), Vote("base", "adapter", "b")] * 3,  # six votes, all the same outcome
        [Vote("adapter", "base", "a"), Vote("adapter", "base", "b"), Vote("prompt", "base", "a")],  # < 5 each
    ],
)
def test_too_few_or_identical_votes_give_no_interval_not_a_zero_width_one(votes) -> None:
    """Resampling one vote (or votes that all agree) returns it every time: the bootstrap interval has zero
    width, which reads as certainty. The leaderboard says n/a instead."""
    board = leaderboard(votes, criterion="quality", rounds=200)
    assert [row["ci95"] for row in board["arms"]] == [None] * len(board["arms"]), board["arms"]


def test_an_interval_appears_once_votes_disagree_and_each_arm_has_five() -> None:
    votes = [Vote("adapter", "base", "a")] * 4 + [Vote("adapter", "base", "b")] * 2
    for row in leaderboard(votes, criterion="quality", rounds=200)["arms"]:
        low, high = row["ci95"]
        assert low < row["rating"] < high
