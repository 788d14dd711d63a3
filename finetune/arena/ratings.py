"""Bradley-Terry ratings from pairwise votes, on the Elo scale, with bootstrap CIs (pure functions).

Conventions (as Chatbot Arena reports them): a rating difference of 400 means 10:1 odds of winning,
ratings are centred on a mean of 1000 unless an anchor arm is named (that arm is then 1000). A tie
counts as half a win for each side and "both bad" is counted as a tie. Every pair of arms gets one
virtual tie (half a win each way): this tiny prior keeps ratings finite when an arm never loses and
joins arms that never met, and with hundreds of votes it moves ratings by well under one Elo point
per virtual game.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

SCALE = 400.0
BASE = 10.0
CENTRE = 1000.0
VIRTUAL_TIES = 1.0
CHOICES = ("a", "b", "tie", "bad")
_MAX_STEP = 2.0  # natural-log units per Newton step (~350 Elo): keeps early steps from overshooting


@dataclass(frozen=True)
class Vote:
    """One vote: the arm shown left, the arm shown right, the choice, and each side's style score."""

    left: str
    right: str
    choice: str
    style_left: float | None = None
    style_right: float | None = None


def outcome(choice: str) -> float:
    """Return the left arm's score for a choice: 1 for "a", 0 for "b", 0.5 for "tie" and "bad"."""
    if choice == "a":
        return 1.0
    if choice == "b":
        return 0.0
    if choice in ("tie", "bad"):
        return 0.5
    raise ValueError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")


def arms_of(votes: Iterable[Vote]) -> list[str]:
    """Return the sorted arm names that appear in the votes."""
    return sorted({v.left for v in votes} | {v.right for v in votes})


def _cells(votes: Sequence[Vote], arms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Collapse votes into distinct (left index, right index, outcome) cells and their counts."""
    index = {arm: i for i, arm in enumerate(arms)}
    counts = Counter((index[v.left], index[v.right], outcome(v.choice)) for v in votes)
    cells = np.array(list(counts), dtype=float).reshape(-1, 3)
    return cells, np.array(list(counts.values()), dtype=float)


def _cell_matrices(cells: np.ndarray, n: int) -> np.ndarray:
    """Return one (n*n) win-matrix contribution per cell, so W = counts @ result (batched resampling)."""
    out = np.zeros((len(cells), n, n))
    for k, (i, j, score) in enumerate(cells):
        out[k, int(i), int(j)] += score
        out[k, int(j), int(i)] += 1.0 - score
    return out.reshape(len(cells), n * n)


def win_matrix(votes: Sequence[Vote], arms: Sequence[str]) -> np.ndarray:
    """Return W where W[i, j] is the (fractional, ties = 1/2) number of wins of arm i over arm j."""
    cells, counts = _cells(votes, arms)
    n = len(arms)
    return (counts @ _cell_matrices(cells, n)).reshape(n, n) if len(cells) else np.zeros((n, n))


def fit_strengths(wins: np.ndarray, virtual_ties: float = VIRTUAL_TIES) -> np.ndarray:
    """Maximum-likelihood Bradley-Terry log-strengths (mean 0) for W of shape (n, n) or (batch, n, n).

    Newton's method on the concave log-likelihood sum W_ij log sigmoid(t_i - t_j); the Hessian is a
    graph Laplacian whose null space (a common shift) is removed by adding the all-ones matrix.
    """
    single = wins.ndim == 2
    w = np.array(wins[None] if single else wins, dtype=float)
    n = w.shape[-1]
    prior = np.full((n, n), virtual_ties / 2.0)
    np.fill_diagonal(prior, 0.0)
    w = w + prior
    games = w + np.swapaxes(w, 1, 2)
    won = w.sum(axis=2)
    theta = np.zeros(w.shape[:2])
    ones = np.ones((n, n))
    for _ in range(200):
        p = expit(theta[:, :, None] - theta[:, None, :])
        grad = won - (games * p).sum(axis=2)
        q = games * p * (1.0 - p)
        lap = -q
        idx = np.arange(n)
        lap[:, idx, idx] = q.sum(axis=2) - q[:, idx, idx]
        step = np.linalg.solve(lap + ones, grad[:, :, None])[:, :, 0]
        size = np.abs(step).max(axis=1, keepdims=True)
        theta += step * np.minimum(1.0, _MAX_STEP / np.maximum(size, 1e-300))
        if size.max() < 1e-10:
            break
    theta -= theta.mean(axis=1, keepdims=True)
    return theta[0] if single else theta


def to_elo(theta: np.ndarray, arms: Sequence[str], anchor: str | None = None) -> np.ndarray:
    """Map log-strengths (last axis = arms) to Elo: mean 1000, or the `anchor` arm at 1000."""
    ref = theta.mean(axis=-1, keepdims=True) if anchor is None else theta[..., [list(arms).index(anchor)]]
    return CENTRE + SCALE / math.log(BASE) * (theta - ref)


def bradley_terry(
    votes: Sequence[Vote], *, anchor: str | None = None, virtual_ties: float = VIRTUAL_TIES
) -> dict[str, float]:
    """Return each arm's Bradley-Terry rating on the Elo scale."""
    arms = arms_of(votes)
    _check_anchor(anchor, arms)
    if not arms:
        return {}
    elo = to_elo(fit_strengths(win_matrix(votes, arms), virtual_ties), arms, anchor)
    return dict(zip(arms, elo.tolist(), strict=True))


def bootstrap_ratings(
    votes: Sequence[Vote],
    *,
    rounds: int = 1000,
    seed: int = 0,
    anchor: str | None = None,
    virtual_ties: float = VIRTUAL_TIES,
) -> tuple[list[str], np.ndarray]:
    """Return (arms, ratings of shape (rounds, arms)) refitted on votes resampled with replacement.

    Resampling n votes with replacement is a multinomial draw over the distinct vote outcomes, which
    lets all rounds be fitted as one batch.
    """
    arms = arms_of(votes)
    _check_anchor(anchor, arms)
    if not arms or rounds <= 0:
        return arms, np.zeros((0, len(arms)))
    cells, counts = _cells(votes, arms)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(int(counts.sum()), counts / counts.sum(), size=rounds)
    n = len(arms)
    wins = (draws @ _cell_matrices(cells, n)).reshape(rounds, n, n)
    return arms, to_elo(fit_strengths(wins, virtual_ties), arms, anchor)


def bootstrap_ci(
    votes: Sequence[Vote],
    *,
    rounds: int = 1000,
    seed: int = 0,
    anchor: str | None = None,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Return each arm's percentile bootstrap confidence interval for its Elo rating."""
    arms, samples = bootstrap_ratings(votes, rounds=rounds, seed=seed, anchor=anchor)
    if not len(samples):
        return {}
    tail = (1.0 - level) / 2.0 * 100.0
    low = np.percentile(samples, tail, axis=0)
    high = np.percentile(samples, 100.0 - tail, axis=0)
    return {arm: (float(lo), float(hi)) for arm, lo, hi in zip(arms, low, high, strict=True)}


def _check_anchor(anchor: str | None, arms: Sequence[str]) -> None:
    """Refuse an anchor arm that has no votes (its rating would be undefined)."""
    if anchor is not None and anchor not in arms:
        raise ValueError(f"anchor arm {anchor!r} has no votes; arms with votes: {', '.join(arms) or 'none'}")


def win_rates(votes: Sequence[Vote]) -> dict[str, dict[str, float | None]]:
    """Return rate[x][y]: the share of x-vs-y votes that x won (ties = 1/2); None where they never met."""
    arms = arms_of(votes)
    wins = win_matrix(votes, arms)
    games = wins + wins.T
    return {
        x: {
            y: (float(wins[i, j] / games[i, j]) if games[i, j] else None)
            for j, y in enumerate(arms)
            if y != x
        }
        for i, x in enumerate(arms)
    }


def pair_counts(votes: Sequence[Vote]) -> list[dict]:
    """Return votes per unordered arm pair with the split: wins of each side, ties and both-bad."""
    table: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for v in votes:
        key = tuple(sorted((v.left, v.right)))
        winner = {"a": v.left, "b": v.right}.get(v.choice)
        table[key][winner or v.choice] += 1
    return [
        {
            "arms": list(key),
            "votes": sum(c.values()),
            "wins": {key[0]: c[key[0]], key[1]: c[key[1]]},
            "ties": c["tie"],
            "both_bad": c["bad"],
        }
        for key, c in sorted(table.items())
    ]


def arm_stats(votes: Sequence[Vote]) -> dict[str, dict[str, int]]:
    """Return per arm: votes it took part in, wins, losses, ties and both-bad."""
    stats: dict[str, Counter] = defaultdict(Counter)
    for v in votes:
        for arm, side in ((v.left, "a"), (v.right, "b")):
            s = stats[arm]
            s["votes"] += 1
            if v.choice in ("tie", "bad"):
                s["ties" if v.choice == "tie" else "both_bad"] += 1
            else:
                s["wins" if v.choice == side else "losses"] += 1
    keys = ("votes", "wins", "losses", "ties", "both_bad")
    return {arm: {k: c[k] for k in keys} for arm, c in stats.items()}


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Return the Wilson score interval for a binomial proportion, or None with no trials."""
    if trials <= 0:
        return None
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def style_agreement(votes: Sequence[Vote]) -> dict:
    """How often a decisive vote picked the side with the higher automatic style score.

    Only votes for "a" or "b" where both sides have a style score and the scores differ count.
    """
    eligible = agreed = 0
    for v in votes:
        if v.choice not in ("a", "b") or v.style_left is None or v.style_right is None:
            continue
        if v.style_left == v.style_right:
            continue
        eligible += 1
        higher = "a" if v.style_left > v.style_right else "b"
        agreed += v.choice == higher
    ci = wilson_interval(agreed, eligible)
    return {
        "votes": eligible,
        "agreed": agreed,
        "rate": agreed / eligible if eligible else None,
        "ci95": list(ci) if ci else None,
    }


def method(rounds: int, seed: int, anchor: str | None) -> dict:
    """Describe how the ratings were computed (stored next to them in report.json)."""
    return {
        "model": "Bradley-Terry, maximum likelihood",
        "scale": f"Elo: {SCALE:g} points = {BASE:g}:1 odds",
        "anchor": f"{anchor} = {CENTRE:g}" if anchor else f"mean = {CENTRE:g}",
        "ties": "half a win for each side",
        "both_bad": "counted as a tie",
        "prior": f"{VIRTUAL_TIES:g} virtual tie between every pair of arms",
        "ci": f"95% percentile bootstrap over votes, {rounds} rounds, seed {seed}; none for an arm with fewer "
              f"than {MIN_VOTES_FOR_CI} votes, or when every vote is the same outcome",
    }


# An arm's rating gets an interval from this many votes on (compare asks 5 paired items for an interval too).
MIN_VOTES_FOR_CI = 5


def leaderboard(
    votes: Sequence[Vote],
    *,
    criterion: str,
    rounds: int = 1000,
    seed: int = 0,
    anchor: str | None = None,
) -> dict:
    """Return ratings with CIs, per-arm counts, the win-rate matrix, pair counts and style agreement."""
    arms = arms_of(votes)
    if anchor is not None and anchor not in arms:
        anchor = None  # a board without the anchor arm (another compare run) falls back to the mean
    ratings = bradley_terry(votes, anchor=anchor)
    cis = bootstrap_ci(votes, rounds=rounds, seed=seed, anchor=anchor)
    stats = arm_stats(votes)
    # Resampling cannot show spread that the votes do not have: one vote, or votes that all say the same thing,
    # resample to themselves and gave a zero-width "95% CI" (1095-1095 after one vote). Such arms get none.
    shown = {arm: ci for arm, ci in cis.items() if stats[arm]["votes"] >= MIN_VOTES_FOR_CI and ci[1] - ci[0] > 1e-6}
    rows = [
        {
            "arm": arm,
            "rating": round(ratings[arm], 1),
            "ci95": [round(shown[arm][0], 1), round(shown[arm][1], 1)] if arm in shown else None,
            **stats[arm],
        }
        for arm in sorted(arms, key=lambda a: -ratings[a])
    ]
    return {
        "votes": len(votes),
        "anchor": anchor,
        "arms": rows,
        "win_rate": win_rates(votes),
        "pairs": pair_counts(votes),
        "style_agreement": style_agreement(votes) if criterion == "style" else None,
    }


def build_results(
    rows: Iterable[Mapping], *, rounds: int = 1000, seed: int = 0, anchor: str | None = None
) -> dict:
    """Group vote rows (source, run, criterion, arm_left, arm_right, choice, rater, style_*) into boards.

    One board per compare folder and criterion: arms of different compare runs are never pooled.
    """
    groups: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for row in rows:
        groups[(row["source"], row["criterion"])].append(row)
    boards = []
    for (source, criterion), group in sorted(groups.items()):
        votes = [
            Vote(r["arm_left"], r["arm_right"], r["choice"], r.get("style_left"), r.get("style_right"))
            for r in group
        ]
        board = leaderboard(votes, criterion=criterion, rounds=rounds, seed=seed, anchor=anchor)
        boards.append(
            {
                "source": source,
                "name": Path(source).name,
                "run": group[0]["run"],
                "criterion": criterion,
                "raters": len({r["rater"] for r in group}),
                **board,
            }
        )
    return {"method": method(rounds, seed, anchor), "boards": boards}
