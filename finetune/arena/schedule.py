"""Choose the next pair to show a rater: balance arm pairs first, then prompts (pure functions)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence

from finetune.arena.samples import Item


def pair_key(item: Item) -> tuple[str, tuple[str, str]]:
    """Return the arm pair an item belongs to (arm pairs of different compare folders are distinct)."""
    return (item.source, item.arms)


def next_item(
    items: Sequence[Item],
    counts: Mapping[Item, int],
    seen: Collection[Item],
    rng: random.Random,
) -> Item | None:
    """Pick the least-voted arm pair that still has an item the rater has not seen, then its least-voted item.

    `counts` holds votes (and pairs issued but not yet voted) per item for this criterion, all raters
    together; ties are broken at random so raters do not all get the same pair. None means the rater
    has seen everything.
    """
    fresh = [item for item in items if item not in seen]
    if not fresh:
        return None
    per_pair: Counter = Counter()
    for item in items:
        per_pair[pair_key(item)] += counts.get(item, 0)
    open_pairs = sorted({pair_key(item) for item in fresh})
    low = min(per_pair[key] for key in open_pairs)
    chosen = rng.choice([key for key in open_pairs if per_pair[key] == low])
    candidates = [item for item in fresh if pair_key(item) == chosen]
    least = min(counts.get(item, 0) for item in candidates)
    return rng.choice([item for item in candidates if counts.get(item, 0) == least])


def orient(item: Item, rng: random.Random) -> tuple[str, str]:
    """Return (left arm, right arm) in random order, so position says nothing about the arm."""
    left, right = item.arms
    return (right, left) if rng.random() < 0.5 else (left, right)
