"""The arena's pair scheduler: arm pairs balanced, then prompts, and no pair twice for one rater."""

from __future__ import annotations

import random
from collections import Counter
from itertools import combinations
from pathlib import Path

from finetune.arena.fixture import write_compare_dir
from finetune.arena.samples import Item, load_compares
from finetune.arena.schedule import next_item, orient, pair_key
from finetune.arena.server import Arena
from finetune.arena.store import Store

ARMS = ("base", "prompt", "adapter", "adapter+prompt")


def make_items(prompts: int = 7, arms: tuple[str, ...] = ARMS, source: str = "/c") -> list[Item]:
    return [
        Item(source, f"p{k}", 0, pair) for k in range(prompts) for pair in combinations(sorted(arms), 2)
    ]


def test_arm_pairs_stay_balanced_across_raters() -> None:
    items = make_items()
    rng = random.Random(0)
    counts: Counter = Counter()
    seen: dict[str, set] = {f"r{k}": set() for k in range(5)}
    for step in range(150):  # 5 raters x 30 of their 42 pairs, interleaved
        rater = f"r{step % 5}"
        item = next_item(items, counts, seen[rater], rng)
        assert item is not None
        assert item not in seen[rater]
        seen[rater].add(item)
        counts[item] += 1
        per_pair = Counter()
        for it in items:
            per_pair[pair_key(it)] += counts[it]
        assert max(per_pair.values()) - min(per_pair.values()) <= 1, (step, per_pair)


def test_least_voted_prompt_is_chosen_within_the_least_voted_pair() -> None:
    items = make_items(prompts=3, arms=("a", "b", "c"))
    counts = Counter({it: 5 for it in items if it.arms != ("a", "b")})  # pair a-b is the least voted
    ab = [it for it in items if it.arms == ("a", "b")]
    counts.update({ab[0]: 2, ab[1]: 0, ab[2]: 1})
    for seed in range(10):
        assert next_item(items, counts, set(), random.Random(seed)) == ab[1]
    # The least-voted prompt already seen by this rater: the next least-voted one of that pair.
    assert next_item(items, counts, {ab[1]}, random.Random(0)) == ab[2]


def test_never_repeats_a_pair_and_reports_done() -> None:
    items = make_items(prompts=4)
    rng = random.Random(1)
    seen: set = set()
    counts: Counter = Counter()
    while (item := next_item(items, counts, seen, rng)) is not None:
        assert item not in seen
        seen.add(item)
        counts[item] += 1
    assert seen == set(items)
    assert next_item(items, Counter(), seen, rng) is None


def test_orientation_is_random_and_keeps_both_arms() -> None:
    rng = random.Random(2)
    item = Item("/c", "p", 0, ("adapter", "base"))
    sides = Counter(orient(item, rng) for _ in range(200))
    assert set(sides) == {("adapter", "base"), ("base", "adapter")}
    assert min(sides.values()) > 60


def test_store_backed_scheduling_per_rater(tmp_path: Path) -> None:
    """Through SQLite: a reload returns the open pair, each pair comes once, then done."""
    compares = load_compares([write_compare_dir(tmp_path / "cmp")])
    store = Store(tmp_path / "a.sqlite")
    arena = Arena(compares=compares, store=store, criteria=["style", "quality"], seed=3)
    total = len(arena.items)
    assert total == 7 * 6  # 7 prompt turns, 4 arms -> 6 arm pairs
    first, _ = arena.issue("ann", "style")
    again, _ = arena.issue("ann", "style")
    assert again["pair_id"] == first["pair_id"]  # not voted yet: same pair, same sides
    keys = set()
    row = first
    for _ in range(total):
        key = (row["prompt_id"], row["turn"], row["arm_a"], row["arm_b"])
        assert key not in keys
        keys.add(key)
        arena.store.record_vote(row["pair_id"], "ann", "a")
        issued = arena.issue("ann", "style")
        if issued is None:
            break
        row = issued[0]
    assert len(keys) == total
    assert arena.issue("ann", "style") is None  # ann has seen everything for style ...
    assert arena.issue("ann", "quality") is not None  # ... but not for quality
    assert arena.issue("bob", "style") is not None  # and bob has seen nothing
    assert arena.progress("ann", "style") == {"voted": total, "total": total}
