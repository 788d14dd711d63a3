"""The typed report writes the same report.json and report.md as the dict-built report did (issue 17 item 8).

The golden files in tests/unit/data were written by the code before the report became a schema.Report,
from the synthetic per-item scores below: every section filled (three arms, conversations, long answers,
multiple choice, a break-even, a decision), every figure seeded, so the files can only change if a
figure or verdict does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
ARMS = ["base", "prompt", "adapter"]
MC_SETS = ["quiz"]


def golden_scores() -> dict:
    """Seeded per-item scores of three arms, as run_compare hands them to analysis (no model needed)."""
    rng = np.random.default_rng(7)
    n, out = 24, {}
    for arm, (low, high, ppl, loops) in {
        "base": (0.0, 0.2, 2.0, 0), "prompt": (0.4, 0.7, 2.0, 2), "adapter": (0.7, 1.0, 1.6, 6)
    }.items():
        style = rng.uniform(low, high, n)
        single = []
        for i, s in enumerate(style):
            looped = i < loops
            single.append({
                "prompt_id": f"p{i}", "style": float(s), "marker": float(s > 0.5),
                "prompt_tokens": 30 + 12 * (arm != "adapter"),
                "completion_tokens": 40 + i % 7, "latency_s": 0.5 + 0.01 * i, "s_per_token": 0.012 + 0.0001 * i,
                "loop": float(looped), "ended": 0.0 if looped else 1.0, "distinct_2": 0.4 if looped else 0.95,
                "content_ref": float(rng.uniform(0.5, 0.9)), "content_base": None if arm == "base" else 0.8,
                "length_ratio": float(rng.uniform(0.7, 1.3)),
            })
        multi = [
            {"prompt_id": f"c{c}", "turn": t,
             "style": float(np.clip(rng.normal((low + high) / 2 - 0.05 * t, 0.05), 0, 1)),
             "marker": float(t % 2), "loop": 0.0, "ended": 1.0, "distinct_2": 0.9,
             "content_base": None if arm == "base" else 0.7}
            for c in range(6) for t in range(3)
        ]
        long = [
            {"prompt_id": f"l{i}", "style": float(rng.uniform(low, high)), "marker": 1.0,
             "first_style": float(rng.uniform(low, high)), "last_style": float(rng.uniform(low, high) * 0.8),
             "first_marker": 1.0, "last_marker": float(i % 2), "loop": 0.0, "ended": float(i % 2),
             "distinct_2": 0.9, "content_base": None if arm == "base" else 0.6}
            for i in range(8)
        ]
        out[arm] = {
            "single": single, "multi": multi, "long": long,
            "ppl": {f"p{i}": float(rng.normal(ppl, 0.1)) for i in range(n)},
            "mc": {"quiz": [{"id": str(i), "correct": float(rng.uniform() < 0.6), "correct_sum": float(i % 2)}
                            for i in range(20)]},
        }
    return out


def typed_report():
    """The golden scores through analysis into a schema.Report, decided, as run_compare assembles one."""
    from finetune.compare import analysis
    from finetune.compare.decision import decide
    from finetune.compare.schema import (
        AdapterCost,
        BreakEven,
        Classifier,
        Cost,
        FinetuneCost,
        Price,
        PromptSet,
        Report,
        Settings,
    )

    scores = golden_scores()
    diffs = analysis.differences(scores, ARMS, MC_SETS, seed=3)
    drift = analysis.drift_section(scores, ARMS, seed=3)
    family = analysis.apply_holm(diffs, drift, ARMS, MC_SETS)
    section = analysis.arm_section(scores, ARMS, seed=3)
    report = Report(
        schema_version=1, run="golden", created_at="2026-12-02T10:00:00+00:00",
        settings=Settings(
            arms=ARMS, adapters={"golden": "outputs/golden"}, model="m", recipe="r.yaml",
            system_prompt="Be a pirate.\nSay arr.", system_prompt_source="recipe", seed=3, do_sample=False,
            temperature=None, repetition_penalty=1.2, max_new_tokens=64, long_max_new_tokens=192, batch_size=16,
            turns=3, prompt_sets={"single": PromptSet(source="d.jsonl", n=24, hash="abc"),
                                  "multi": PromptSet(source=None, n=0, hash=None)},
            perplexity="ppl", bootstrap={"resamples": 2000}, cache={"folder": None, "hits": []}, device="cpu",
            dtype="fp32", versions={"torch": "x"}, statistics=analysis.statistics_settings(family),
        ),
        arms=section, differences=diffs, drift=drift,
        multiple_choice=analysis.mc_section(scores, ARMS, {"quiz": ("quiz.jsonl", 20, "mean")}, seed=3),
        cost=Cost(
            price=Price(per_mtok=0.15, currency="USD", source="--price-per-mtok"), system_prompt_tokens=42.5,
            adapters={"adapter": AdapterCost(
                run="golden", finetune_cost=FinetuneCost(amount=0.02, currency="USD", source="summary", note=None),
                break_even=BreakEven(status="breaks_even", requests=3138, saving_per_request=6.375e-06,
                                     currency="USD"),
                text="adapter: breaks even after 3,138 requests")},
        ),
        classifier=Classifier(available=True, reason=None, n_train=48, n_test=16, accuracy=0.9, embedder="e"),
        verdicts=analysis.quality_lines(section, ARMS) + analysis.verdict_lines(diffs, ARMS, MC_SETS)
        + analysis.drift_lines(drift),
        decision=None, warnings=["a warning"], timings={"total_s": 1.0},
    )
    report.decision = decide(report)
    return report


def test_report_json_and_markdown_are_as_before_the_report_was_typed():
    from finetune.compare.report import markdown, report_json

    report = typed_report()
    want = json.loads((DATA / "compare_report.json").read_text(encoding="utf-8"))
    assert json.loads(report_json(report)) == want
    assert markdown(report) == (DATA / "compare_report.md").read_text(encoding="utf-8")


def test_report_json_reads_back_into_the_same_report():
    from finetune.compare.report import report_json
    from finetune.compare.schema import Report

    report = typed_report()
    again = Report.model_validate_json(report_json(report))
    assert again == report
    assert report_json(again) == report_json(report)


def test_every_verdict_test_has_a_holm_p_value_and_no_other_does():
    # p_holm is written only where Holm applied (docs/compare.md): base's drift changes have none.
    from finetune.compare.report import report_json

    data = json.loads(report_json(typed_report()))
    assert "p_holm" not in data["drift"]["multi"]["base"]["change"]
    assert data["drift"]["multi"]["adapter"]["change"]["p_holm"] is not None
    assert "arena" not in data


def test_an_adapter_arms_latency_names_the_arm_it_decodes_as_once_merged():
    from types import SimpleNamespace

    from finetune.compare.decision import _unmerged_note

    report = typed_report()
    report.arms["prompt"].s_per_token.mean = 0.020  # apart from the base's, so the line shows which it took
    adapter = report.arms["adapter"]
    plain = _unmerged_note(SimpleNamespace(name="adapter", metrics=adapter), report)
    with_prompt = _unmerged_note(SimpleNamespace(name="adapter+prompt", metrics=adapter), report)
    base_ms = round(1000 * report.arms["base"].s_per_token.mean)
    assert f"the base arm {base_ms}:" in plain and plain.endswith("decodes as the base arm does)")
    assert "the prompt arm 20:" in with_prompt and with_prompt.endswith("decodes as the prompt arm does)")
    assert _unmerged_note(SimpleNamespace(name="prompt", metrics=report.arms["prompt"]), report) == ""
