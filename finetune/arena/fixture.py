"""Write a small synthetic compare folder (tests, demos): several arms, multi-turn, Japanese and HTML text."""

from __future__ import annotations

import json
import random
from pathlib import Path

ARMS = ("base", "prompt", "adapter", "adapter+prompt")
# How strongly each arm speaks in the persona's voice (the fixture's "true" style level).
_VOICE = {"base": 0.1, "prompt": 0.5, "adapter": 0.8, "adapter+prompt": 0.9}

_SINGLE = [
    ("heldout-000", "How do I boil an egg?", "Put the egg in boiling water for nine minutes, then cool it."),
    ("heldout-001", "日本の首都はどこですか？", "日本の首都は東京です。人口はおよそ千四百万人です。"),
    (
        "heldout-002",
        "Explain this HTML: <script>alert(1)</script>",
        "That tag <script>alert(1)</script> runs code; <img src=x onerror=alert(2)> does too.",
    ),
    ("heldout-003", "Name three colours of the rainbow.", "Red, green and violet."),
]
_LONG = (
    "heldout-004",
    "Write a short story about a lighthouse.",
    "The keeper climbed the stairs at dusk and lit the lamp.\n\n" * 6,
)
_MULTI = (
    "multi-000",
    ["Tell me about the sea.", "And what lives in it? 海の生き物は？"],
    ["The sea covers most of the planet.", "Fish, whales and octopuses: 魚、クジラ、タコ。"],
)


def _level(arm: str) -> float:
    """Return an arm's persona level; unlisted arms like `adapter:<run>` count as adapters."""
    return _VOICE.get(arm, 0.8 if arm.startswith("adapter") else 0.1)


def _voice(text: str, arm: str, rng: random.Random) -> str:
    """Dress a neutral answer in the persona's voice to a degree that depends on the arm."""
    level = _level(arm)
    if level >= 0.8:
        return f"Arr, matey! {text} Yo ho ho!"
    if level >= 0.5:
        return f"Ahoy. {text}"
    return text if rng.random() < 0.5 else f"Well, {text[0].lower()}{text[1:]}"


def _scores(arm: str, rng: random.Random, with_style: bool) -> dict:
    """Return compare-like scores: marker hit rate and a noisy style probability."""
    scores = {"marker": 1.0 if _level(arm) >= 0.5 else 0.0}
    if with_style:
        scores["style"] = round(min(1.0, max(0.0, _level(arm) + rng.uniform(-0.08, 0.08))), 3)
    return scores


def write_compare_dir(
    folder: str | Path,
    *,
    run: str = "pirate-smollm2",
    arms: tuple[str, ...] = ARMS,
    seed: int = 0,
    missing_style: bool = True,
) -> Path:
    """Write samples.jsonl, report.json and report.md like `finetune compare`; return the folder.

    Holds 4 single prompts (one Japanese, one full of HTML), one long answer and a 2-turn conversation,
    so 7 prompt turns per arm; with `missing_style` one reply has no style score.
    """
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []

    def add(arm: str, prompt_id: str, kind: str, turn: int, conversation: list, text: str) -> None:
        with_style = not (missing_style and arm == arms[0] and prompt_id == "heldout-003")
        rows.append(
            {
                "run": run,
                "arm": arm,
                "prompt_id": prompt_id,
                "kind": kind,
                "turn": turn,
                "conversation": conversation,
                "text": text,
                "prompt_tokens": 20 + len(conversation) * 10,
                "completion_tokens": len(text) // 4 + 1,
                "latency_s": round(rng.uniform(0.5, 2.0), 2),
                "scores": _scores(arm, rng, with_style),
            }
        )

    for arm in arms:
        for prompt_id, question, answer in [*_SINGLE, _LONG]:
            kind = "long" if prompt_id == _LONG[0] else "single"
            add(arm, prompt_id, kind, 0, [{"role": "user", "content": question}], _voice(answer, arm, rng))
        prompt_id, questions, answers = _MULTI
        conversation: list = []
        for turn, (question, answer) in enumerate(zip(questions, answers, strict=True)):
            conversation = [*conversation, {"role": "user", "content": question}]
            reply = _voice(answer, arm, rng)
            add(arm, prompt_id, "multi", turn, conversation, reply)
            conversation = [*conversation, {"role": "assistant", "content": reply}]

    with (folder / "samples.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    report = {"run": run, "arms": list(arms), "samples": len(rows)}
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(
        f"# Compare: {run}\n\n## Summary\n\nSynthetic fixture.\n\n## Samples\n\nSee samples.jsonl.\n",
        encoding="utf-8",
    )
    return folder
