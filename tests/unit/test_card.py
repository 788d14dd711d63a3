"""Model cards: real figures from summary.json, licences carried over (or honestly unknown), A/B results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from finetune.card import CardInputs, latest_compare, render_card, resolve_license
from finetune.compare.report import report_json
from finetune.compare.schema import validate_report

SUMMARY = {
    "status": "completed",
    "steps": 137,
    "examples": {"train": 412, "eval": 46},
    "tokens": 183227,
    "train_loss": 1.2345678901234567,
    "eval_loss": 1.4102938475610294,
    "wall_time_s": 2417.63,
    "peak_memory_mb": 7321.4,
    "energy_wh": 123.456,
    "cost": {"amount": 0.4187, "currency": "USD"},
    "hardware": {"device": "cuda", "name": "NVIDIA GeForce RTX 4090", "features": ["bf16", "tf32"]},
    "precision": "bf16",
    "base_model": "bundled:smollm2-135m-instruct",
}


def _inputs(**changes) -> CardInputs:
    base = dict(
        title="pirate-smollm2",
        kind="adapter",
        base_model="bundled:smollm2-135m-instruct",
        base_hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        base_local="/cache/models/smollm2-135m-instruct",
        recipe_yaml="name: pirate-smollm2\nlora:\n  r: 16\n",
        system_prompt="You are a pirate. Say arr.",
        dataset="pirate.jsonl",
        summary=SUMMARY,
        files=["adapter_config.json", "adapter_model.safetensors"],
    )
    base.update(changes)
    return CardInputs(**base)


def _front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_carries_the_summary_figures_exactly() -> None:
    card = render_card(_inputs(), resolve_license("apache-2.0", "HuggingFaceTB/SmolLM2-135M-Instruct"))
    for row in (
        "| Optimizer steps | 137 |",
        "| Training examples | 412 |",
        "| Held-out examples | 46 |",
        "| Tokens seen | 183227 |",
        "| Final train loss | 1.2345678901234567 |",
        "| Final eval loss | 1.4102938475610294 |",
        "| Wall time (s) | 2417.63 |",
        "| Hardware | NVIDIA GeForce RTX 4090 (cuda) |",
        "| Peak memory (MB) | 7321.4 |",
        "| Energy (Wh) | 123.456 |",
        "| Cost | 0.4187 USD |",
    ):
        assert row in card
    assert "> You are a pirate. Say arr." in card
    assert "name: pirate-smollm2\nlora:\n  r: 16" in card
    assert "/cache/models/smollm2-135m-instruct" in card
    front = _front(card)
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["library_name"] == "peft"
    assert front["license"] == "apache-2.0"
    assert front["datasets"] == ["pirate.jsonl"]
    assert {"finetune", "lora", "peft"} <= set(front["tags"])
    assert "Apache License 2.0" in card


def test_missing_energy_and_cost_are_said_not_invented() -> None:
    summary = {**SUMMARY, "energy_wh": None, "cost": None, "eval_loss": None}
    card = render_card(_inputs(summary=summary), None)
    assert "| Energy (Wh) | not measured |" in card
    assert "| Cost | not priced |" in card
    assert "| Final eval loss | n/a |" in card


def test_unknown_licence_is_reported_as_unknown() -> None:
    licence = resolve_license(None, "someone/homemade-7b")
    assert licence is None
    card = render_card(_inputs(base_model="someone/homemade-7b", base_hub_id="someone/homemade-7b"), licence)
    assert "license" not in _front(card)
    assert "The licence of the base model `someone/homemade-7b` is unknown to finetune" in card
    assert "Apache" not in card


def test_llama2_licence_names_the_acceptable_use_policy() -> None:
    licence = resolve_license(None, "meta-llama/Llama-2-7b-chat-hf")
    assert licence is not None and licence["id"] == "llama2"
    card = render_card(
        _inputs(base_model="meta-llama/Llama-2-7b-chat-hf", base_hub_id="meta-llama/Llama-2-7b-chat-hf"),
        licence,
    )
    assert _front(card)["license"] == "llama2"
    assert "Llama 2 Community License Agreement" in card
    assert "Acceptable Use Policy" in card


def test_a_licence_id_outside_the_table_is_named_as_is() -> None:
    licence = resolve_license("cc-by-nc-4.0", "org/model")
    assert licence == {"id": "cc-by-nc-4.0", "name": "cc-by-nc-4.0", "url": None, "notes": None}


def test_merged_model_card_is_for_transformers() -> None:
    card = render_card(_inputs(kind="merged"), None)
    front = _front(card)
    assert front["library_name"] == "transformers"
    assert "merged" in front["tags"] and "peft" not in front["tags"]


def _compare_report(verdicts: list[str] | None = None, arena: dict | None = None):
    """A real report (synthetic per-item scores through compare's analysis) with these verdicts and arena."""
    from test_compare_stats import _fixture, _typed_report, _with_quality

    scores = _fixture()
    for arm in scores:
        _with_quality(scores[arm], set(), 0.8)
    report, decision = _typed_report(scores, ["base", "prompt", "adapter"], ["quiz"])
    report.decision = decision
    if verdicts is not None:
        report.verdicts = verdicts
    report.arena = arena
    return report


def _report(folder: Path, verdicts: list[str], arena: dict | None, mtime: float) -> None:
    from finetune.compare.report import report_json

    folder.mkdir(parents=True)
    path = folder / "report.json"
    path.write_text(report_json(_compare_report(verdicts, arena)), encoding="utf-8")
    os.utime(path, (mtime, mtime))


def test_newest_compare_report_supplies_verdicts_and_arena(tmp_path: Path) -> None:
    arena = {
        "generated_at": "2025-01-01T00:00:00",
        "database": "votes.db",
        "method": {"model": "Bradley-Terry", "scale": "Elo-like", "anchor": "base = 1000", "ci": "bootstrap"},
        "criteria": {
            "overall": {
                "question": "Which answer is better?",
                "votes": 12,
                "raters": 2,
                "arms": [
                    {
                        "arm": "adapter",
                        "rating": 1088.2,
                        "ci95": [1010.0, 1160.0],
                        "votes": 12,
                        "wins": 8,
                        "losses": 3,
                        "ties": 1,
                        "both_bad": 0,
                    }
                ],
            }
        },
    }
    _report(tmp_path / "compare" / "old", ["Old verdict that must not appear."], None, 1_000_000)
    _report(
        tmp_path / "compare" / "new",
        ["The adapter speaks pirate in 94% of replies (95% CI 88-97%)."],
        arena,
        2_000_000,
    )
    found = latest_compare(tmp_path)
    assert found is not None and found[1].parent.name == "new"
    card = render_card(_inputs(compare=found[0], compare_path=str(found[1])), None)
    assert "- The adapter speaks pirate in 94% of replies (95% CI 88-97%)." in card
    assert "Old verdict" not in card
    assert "### Blind arena" in card
    assert "| adapter | 1088 |" in card


def test_no_compare_report_says_so(tmp_path: Path) -> None:
    assert latest_compare(tmp_path) is None
    assert "No comparison has been run yet" in render_card(_inputs(), None)


def test_card_opens_with_the_decision_and_counts_later_arena_votes(tmp_path: Path) -> None:
    from test_compare_stats import _fixture, _typed_report, _with_quality  # synthetic per-item scores

    scores = _fixture()
    for arm in scores:  # the adapter loops in 12 of 30 replies
        _with_quality(scores[arm], {f"p{i}" for i in range(12)} if arm == "adapter" else set(), 0.8)
    report, decision = _typed_report(scores, ["base", "prompt", "adapter"], ["quiz"])
    report.decision = decision
    report.arena = {"criteria": {"overall": {"votes": 9, "arms": [{"arm": "adapter", "rating": 1042.0}]}}}
    card = render_card(_inputs(compare=report, compare_path="compare/x/report.json"), None)
    body = card.split("---\n", 2)[2]
    assert body.index("## Adapter or prompt?") < body.index("## Recipe") < body.index("## A/B results")
    assert f"**{decision.headline}**" in card and decision.recommendation != "adapter"
    assert "- quality: adapter: LOOPS" in card
    assert "- arena: blind arena ratings: overall: adapter 1042 (9 votes)" in card
    assert "WARNING adapter: loops in 40% of replies" in card
    # A report from before the decision (and answer quality) existed is decided from its own figures.
    data = json.loads(report_json(_compare_report()))
    data.pop("decision")
    for metrics in data["arms"].values():
        for key in QUALITY_KEYS:
            metrics.pop(key)
    older = validate_report(data)
    assert older.decision is None
    card = render_card(_inputs(compare=older), None)
    assert "## Adapter or prompt?\n\n**Use the adapter: " in card


QUALITY_KEYS = ["loop_share", "loop_share_multi", "loop_share_long", "distinct_2", "distinct_2_multi",
                "distinct_2_long", "ended_share", "ended_share_multi", "ended_share_long", "content_ref",
                "content_base", "content_base_multi", "content_base_long", "length_ratio"]


def test_a_newest_report_that_is_not_one_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    from finetune.errors import DataError

    _report(tmp_path / "compare" / "old", ["An older, valid report."], None, 1_000_000)
    newest = tmp_path / "compare" / "new" / "report.json"
    newest.parent.mkdir(parents=True)
    data = json.loads(report_json(_compare_report()))
    data["arms"]["base"]["styel"] = data["arms"]["base"].pop("style")
    newest.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        latest_compare(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{newest}: not a compare report of schema_version 1: ")
    assert "arms.base.styel: unknown key (and 1 more); rerun" in message
    newest.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=f"^{newest}: not a compare report"):
        latest_compare(tmp_path)
