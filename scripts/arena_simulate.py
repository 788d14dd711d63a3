"""Cast arena votes with simulated raters who prefer the persona's voice, then print the leaderboard.

A simulated rater sees only what a person sees (the blind pair). With `--judge markers` (the default) it
reads the two answers and counts the persona's marker phrases in each (the recipe's `style.markers`, the
same regular expressions compare uses), so its votes are independent of compare's style classifier and
the leaderboard's "agreement with the automatic style score" means something. With `--judge style` it
looks the texts up in samples.jsonl and picks the higher automatic `scores.style`. Equal counts (or
near-equal scores) give a tie, and with probability --noise the rater picks the other side.
It talks to a running server (--url) or, without --url, to an
in-process app on --db (default outputs/arena-sim.sqlite, kept apart from people's votes; with --url
the votes go into that server's database, as votes of raters named sim-1, sim-2, ...).

    python scripts/arena_simulate.py outputs/pirate/compare/20261205-133427 --votes 60
    python scripts/arena_simulate.py outputs/pirate/compare/20261205-133427 --url http://127.0.0.1:8765 --votes 60
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from finetune.arena.samples import Sample, load_compares  # noqa: E402


def preference(
    left: Sample | None, right: Sample | None, rng: random.Random, noise: float, margin: float
) -> str:
    """Return the simulated choice: the more persona-like side, a tie when close, flipped with prob. noise."""

    def score(sample: Sample | None, key: str) -> float | None:
        value = (sample.scores if sample else {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    for key in ("style", "marker"):
        a, b = score(left, key), score(right, key)
        if a is not None and b is not None:
            break
    else:
        return rng.choice(["a", "b"])
    if abs(a - b) < margin:
        return "tie"
    return _noisy("a" if a > b else "b", rng, noise)


def _noisy(best: str, rng: random.Random, noise: float) -> str:
    """The better side, or with probability `noise` the other one (a rater's slips)."""
    if rng.random() < noise:
        return "b" if best == "a" else "a"
    return best


def marker_preference(
    left: str, right: str, markers: list[re.Pattern], rng: random.Random, noise: float
) -> str:
    """Return the simulated choice by reading the texts: more persona markers wins, equal counts tie."""
    a, b = (sum(len(m.findall(text)) for m in markers) for text in (left, right))
    if a == b:
        return "tie"
    return _noisy("a" if a > b else "b", rng, noise)


def recipe_markers(compares: dict) -> list[re.Pattern]:
    """The style markers of the recipe that each compare folder was made from (its report's settings)."""
    from finetune.compare.metrics import compile_markers
    from finetune.recipe import load_recipe

    patterns: list[str] = []
    for compare in compares.values():
        report = json.loads((Path(compare.source) / "report.json").read_text(encoding="utf-8"))
        recipe = load_recipe(Path(report["settings"]["recipe"]))
        patterns += [p for p in recipe.style.markers if p not in patterns]
    if not patterns:
        raise SystemExit("the recipe names no style.markers: use --judge style")
    return compile_markers(patterns)


def _client(args: argparse.Namespace, compares: dict):  # noqa: ANN202 (httpx or starlette client)
    """Return an HTTP client for the server, or for an in-process app on --db."""
    headers = {"X-Arena-Token": args.token} if args.token else {}
    if args.url:
        import httpx

        return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=30)
    from starlette.testclient import TestClient

    from finetune.arena.server import Arena, create_app
    from finetune.arena.store import Store
    from finetune.paths import outputs_dir

    db = args.db or outputs_dir() / "arena-sim.sqlite"
    arena = Arena(compares=compares, store=Store(db), criteria=[args.criterion], seed=args.seed)
    print(f"in-process arena on {db}")
    return TestClient(create_app(arena), base_url="http://127.0.0.1", headers=headers)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, cast the votes, print the leaderboard; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("compare_dirs", nargs="+", type=Path, help="output folders of `finetune compare`")
    parser.add_argument("--url", help="a running `finetune arena` server (default: in-process)")
    parser.add_argument("--db", type=Path, help="in-process database (default outputs/arena-sim.sqlite)")
    parser.add_argument("--token", help="the server's token, if it has one")
    parser.add_argument("--judge", default="markers", choices=["markers", "style"],
                        help="read the texts for persona markers, or use compare's style scores")
    parser.add_argument("--votes", type=int, default=60, help="votes to cast in total")
    parser.add_argument("--raters", type=int, default=3, help="simulated raters (each sees a pair once)")
    parser.add_argument("--noise", type=float, default=0.15, help="probability of picking the other side")
    parser.add_argument("--margin", type=float, default=0.05, help="score difference below which it is a tie")
    parser.add_argument("--criterion", default="style", choices=["style", "quality"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from finetune.arena.cli import print_results
    from finetune.errors import FinetuneError

    try:
        compares = load_compares(args.compare_dirs)
    except FinetuneError as exc:  # one line, as `finetune arena` says it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    index = {
        (s.prompt_id, s.turn, s.text): s
        for c in compares.values()
        for by_arm in c.samples.values()
        for s in by_arm.values()
    }
    markers = recipe_markers(compares) if args.judge == "markers" else []
    rng = random.Random(args.seed)
    raters = [f"sim-{k + 1}" for k in range(args.raters)]
    cast = 0
    with _client(args, compares) as client:
        while cast < args.votes and raters:
            rater = raters[cast % len(raters)]
            response = client.get("/api/pair", params={"rater": rater, "criterion": args.criterion})
            response.raise_for_status()
            pair = response.json()
            if pair.get("done"):
                raters.remove(rater)
                continue
            left = index.get((pair["prompt_id"], pair["turn"], pair["a"]))
            right = index.get((pair["prompt_id"], pair["turn"], pair["b"]))
            if args.judge == "markers":
                choice = marker_preference(pair["a"], pair["b"], markers, rng, args.noise)
            else:
                choice = preference(left, right, rng, args.noise, args.margin)
            body = {"pair_id": pair["pair_id"], "rater": rater, "choice": choice}
            vote = client.post("/api/vote", json=body)
            vote.raise_for_status()
            cast += 1
        print(f"cast {cast} votes")
        results = client.get("/api/results")
        results.raise_for_status()
    print_results(results.json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
