"""`finetune compare` on a real pirate adapter: the adapter's voice must beat the base model's, with CIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.compare.run import CompareOptions, run_compare
from finetune.compare.schema import validate_report

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "datasets" / "eval"
CONTRACT = {"run": str, "arm": str, "prompt_id": str, "kind": str, "turn": int, "conversation": list,
            "text": str, "prompt_tokens": int, "completion_tokens": int, "latency_s": float, "scores": dict}
ARMS = ["base", "prompt", "adapter", "adapter+prompt"]


def options(pirate_run, out: Path, cache: Path, **overrides) -> CompareOptions:
    """The small comparison this test runs (16 prompts, 2 conversations x 3 turns, 2 long, 20 MC)."""
    settings = dict(
        recipe_path=pirate_run.recipe_path, adapters=[str(pirate_run.run_dir)], samples=16,
        conversations=EVAL / "pirate_conversations.jsonl", turns=3, max_conversations=2,
        long_file=EVAL / "long_prompts.jsonl", max_long=2, max_new_tokens=48, long_max_new_tokens=96,
        mc_files=[EVAL / "commonsense_en.jsonl"], mc_samples=20, classifier_samples=48, out=out,
        cache_dir=cache, batch_size=16,
        # Fixed, not auto: each test measures the hardware afresh (its own FINETUNE_HOME), and on a loaded CPU
        # where bf16 and fp32 are close the auto choice can flip between two runs, changing the cache key.
        dtype="fp32",
    )
    settings.update(overrides)
    return CompareOptions(**settings)


@pytest.fixture(scope="module")
def one_thread():
    """Two shared CPU cores: one intra-op thread avoids oversubscription stalls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def compared(pirate_run, tmp_path_factory, one_thread):
    """One full comparison of the four arms; returns (folder, report as report.json has it, cache folder)."""
    root = tmp_path_factory.mktemp("compare")
    # An hour's budget: the probe runs and predicts, and nothing is cut.
    folder, report = run_compare(options(pirate_run, root / "out", root / "cache", max_time=3600.0),
                                 say=lambda *_: None)
    return folder, report.model_dump(mode="json", exclude_unset=True), root / "cache"


def test_adapter_speaks_pirate_far_more_than_the_base_model(compared):
    _, report, _ = compared
    arms = report["arms"]
    assert report["settings"]["arms"] == ARMS
    assert report["classifier"]["available"] and report["classifier"]["accuracy"] >= 0.7
    adapter, base = arms["adapter"]["style"], arms["base"]["style"]
    assert adapter["n"] == base["n"] == 16
    # Non-overlapping 95% intervals: the adapter's lowest plausible style beats the base's highest.
    assert adapter["ci_low"] > base["ci_high"], (adapter, base)
    assert arms["adapter"]["marker_rate"]["mean"] > arms["base"]["marker_rate"]["mean"]
    style = next(d for d in report["differences"]
                 if d["metric"] == "style" and d["a"] == "adapter" and d["b"] == "base")
    assert style["significant"] and style["better"] == "adapter"
    assert any(v.startswith("adapter beats base on style score by ") for v in report["verdicts"])


def test_report_json_matches_the_documented_schema(compared):
    folder, report, _ = compared
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    validate_report(data)
    assert data["schema_version"] == 1 and data["run"] == "pirate-smollm2"
    assert set(data["multiple_choice"]) == {"commonsense_en"}
    mc = data["multiple_choice"]["commonsense_en"]
    assert mc["n"] == 20 and all(mc["arms"][a]["accuracy"]["n"] == 20 for a in ARMS)
    assert data["arms"]["prompt"]["prompt_tokens"]["mean"] > data["arms"]["base"]["prompt_tokens"]["mean"]
    assert data["cost"]["system_prompt_tokens"] > 0
    adapter_cost = data["cost"]["adapters"]["adapter"]
    assert adapter_cost["finetune_cost"]["source"] == "summary"  # the recipe prices its own run
    breaks = adapter_cost["break_even"]
    assert breaks["status"] == "breaks_even" and breaks["requests"] > 0
    assert any("breaks even after" in v for v in data["verdicts"])
    by_turn = data["drift"]["multi"]["prompt"]["by_turn"]
    assert [t["turn"] for t in by_turn] == [0, 1, 2] and all(t["style"]["n"] == 2 for t in by_turn)
    assert set(data["drift"]["long"]) == set(ARMS)
    assert data["arms"]["adapter"]["perplexity"]["mean"] < data["arms"]["base"]["perplexity"]["mean"]
    # A report that breaks the schema is refused.
    data["arms"]["base"]["surprise"] = 1
    with pytest.raises(ValueError):
        validate_report(data)


def test_samples_follow_the_arena_contract(compared):
    folder, _, _ = compared
    lines = [json.loads(line) for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    # 16 single + 2 conversations x 3 turns + 2 long, for each of the four arms.
    assert len(lines) == 4 * (16 + 6 + 2)
    for line in lines:
        for key, kind in CONTRACT.items():
            assert isinstance(line[key], kind), (key, line)
        assert line["kind"] in ("single", "multi", "long")
        assert line["conversation"][-1]["role"] == "user"
        assert all(m["role"] != "system" for m in line["conversation"])
        assert set(line["scores"]) >= {"marker", "style"}
    ids = {arm: {(x["prompt_id"], x["turn"]) for x in lines if x["arm"] == arm} for arm in ARMS}
    assert all(ids[arm] == ids["base"] for arm in ARMS)
    # Multi-turn: each arm saw its own earlier replies.
    for arm in ARMS:
        conv = {x["turn"]: x for x in lines if x["arm"] == arm and x["kind"] == "multi"
                and x["prompt_id"] == "conv-01"}
        assert [m["role"] for m in conv[2]["conversation"]] == ["user", "assistant"] * 2 + ["user"]
        assert conv[2]["conversation"][1]["content"] == conv[0]["text"]
        assert conv[2]["conversation"][3]["content"] == conv[1]["text"]
    # The arena, the contract's real reader, accepts the folder.
    from finetune.arena.samples import load_compare

    assert len(load_compare(folder).items()) == (16 + 6 + 2) * 6


def test_markdown_and_self_contained_html(compared):
    folder, report, _ = compared
    md = (folder / "report.md").read_text(encoding="utf-8")
    assert "## Verdicts" in md and report["verdicts"][0] in md
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2  # metrics and drift charts, embedded
    assert "<script" not in page and "src='http" not in page


def test_answer_quality_and_the_decision_on_real_replies(compared):
    # Issue 21: quality rows for every arm and set, WARNING lines exactly for arms that loop, and the
    # "Adapter or prompt?" section opening every report.
    from finetune.compare.analysis import LOOP_ALERT
    from finetune.compare.quality import is_loop

    folder, report, _ = compared
    for arm in ARMS:
        metrics = report["arms"][arm]
        assert metrics["loop_share"]["n"] == 16 and metrics["ended_share"]["n"] == 16
        assert metrics["content_ref"]["n"] == 16 and 0 < metrics["content_ref"]["mean"] <= 1
        assert metrics["loop_share_multi"]["n"] == 2 and metrics["loop_share_long"]["n"] == 2
        assert (metrics["content_base"] is None) == (arm == "base")
        loops = max(metrics[k]["mean"] for k in ("loop_share", "loop_share_multi", "loop_share_long"))
        warned = any(v.startswith(f"WARNING {arm}:") for v in report["verdicts"])
        assert warned == (loops > LOOP_ALERT), (arm, loops, report["verdicts"])
    lines = [json.loads(line) for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    for line in lines:  # every reply's loop flag is the shared quality function's
        assert line["scores"]["loop"] == float(is_loop(line["text"]))
    assert any(" loop share " in v and "adapter" in v and "prompt" in v for v in report["verdicts"])
    decision = report["decision"]
    assert decision["recommendation"] in ("adapter", "prompt", "both", "neither", "not enough evidence")
    assert [r["topic"] for r in decision["reasons"]] == [
        "style", "quality", "drift", "ability", "arena", "latency", "cost"]
    assert report["settings"]["statistics"]["family_size"] >= 8  # sets of 2 items have no test
    md = (folder / "report.md").read_text(encoding="utf-8").splitlines()
    assert md[2] == "## Adapter or prompt?" and md[4] == f"**{decision['headline']}**"
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert page.index("Adapter or prompt?") < page.index("<h2>Verdicts</h2>")
    assert "NaN" not in (folder / "report.json").read_text(encoding="utf-8")


def test_base_outputs_are_cached_across_runs(pirate_run, compared, tmp_path, one_thread):
    first_folder, first, cache = compared
    folder, again = run_compare(options(pirate_run, tmp_path / "again", cache, arms="base,prompt"),
                                say=lambda *_: None)
    hits = set(again.settings.cache["hits"])
    assert {"single/base", "single/prompt", "classifier-base/base", "perplexity/base",
            "mc-commonsense_en/prompt"} <= hits
    # Conversations and long answers are computed again, every arm in shared batches (never cached), and in
    # fp32 the base rows that shared PEFT's mixed batches with adapter rows read as the plain model's.
    assert not {"multi/base", "multi/prompt", "long/base", "long/prompt"} & hits
    old = (first_folder / "samples.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in old.splitlines()]
    first_texts = {(x["arm"], x["prompt_id"], x["turn"]): x["text"] for x in rows}
    for x in map(json.loads, (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()):
        assert first_texts[(x["arm"], x["prompt_id"], x["turn"])] == x["text"]
    assert again.arms["base"].style.mean == pytest.approx(first["arms"]["base"]["style"]["mean"])


def test_a_budget_the_sets_fit_in_cuts_nothing(compared):
    _, report, _ = compared
    budget = report["settings"]["budget"]
    asked = {"singles": 16, "conversations": 2, "long": 2, "mc": 20, "classifier": 48}
    assert budget["requested"] == budget["fitted"] == asked
    sets = report["settings"]["prompt_sets"]
    assert sets["single"]["n"] == 16 and sets["classifier"]["n"] == 48 and sets["mc:commonsense_en"]["n"] == 20
    rates = budget["rates"]
    assert all(rates[k] > 0 for k in ("prefill_tokens_s", "score_tokens_s", "step_per_row_s", "embed_text_s"))
    # Every part predicted and measured; the prediction takes replies at full length, so it is an upper
    # bound where replies end early, but not a wild one (the same machine, seconds apart).
    assert set(budget["predicted_s"]) == set(budget["measured_s"]) == {"single", "shared", "classifier", "score",
                                                                      "embed"}
    # Embedding is timed apart from the steps it runs in: each part is what its own rate predicts.
    assert 0 < budget["measured_s"]["embed"] < report["timings"]["classifier_s"] + report["timings"]["score_s"]
    predicted, measured = sum(budget["predicted_s"].values()), sum(budget["measured_s"].values())
    assert 0.25 < predicted / measured < 4, (budget["predicted_s"], budget["measured_s"])
    assert not any("--max-time" in w for w in report["warnings"])


def test_a_compare_learns_from_the_one_before_it_here(pirate_run, compared, tmp_path, one_thread):
    from finetune.compare import budget

    _, first, cache = compared
    before = first["settings"]["budget"]
    assert before["learned"] == {"from_compares": 0, "factors": dict.fromkeys(budget.PARTS, 1.0)}
    # The module's compare, as run.py stored it in that compare's FINETUNE_HOME (this test has its own).
    key = budget.learning_key(first["settings"]["model"], first["settings"]["dtype"])
    budget.remember(key, before["predicted_s"], before["measured_s"], "the module's compare")
    said: list[str] = []
    _, again = run_compare(options(pirate_run, tmp_path / "out", cache, max_time=3600.0, arms="base,adapter"),
                           say=said.append)
    low, high = budget.FACTOR_RANGE
    expected = {part: min(high, max(low, before["measured_s"][part] / before["predicted_s"][part]))
                if before["predicted_s"][part] >= budget.LEARN_MIN_S else 1.0 for part in budget.PARTS}
    learned = again.settings.budget["learned"]
    assert learned["from_compares"] == 1 and learned["factors"] == pytest.approx(expected, abs=1e-3)
    assert "corrected by 1 earlier compare here" in next(text for text in said if "time budget" in text)
    # This compare is stored in turn: its unscaled prediction, which its learned factors scaled.
    records = json.loads((Path(os.environ["FINETUNE_HOME"]) / budget.LEARN_FILE).read_text(encoding="utf-8"))
    assert len(records) == 2 and records[-1]["key"] == key
    stored, reported = records[-1], again.settings.budget
    assert stored["measured_s"] == pytest.approx(reported["measured_s"], abs=0.06)
    scaled = {part: stored["predicted_s"][part] * learned["factors"][part] for part in budget.PARTS}
    assert scaled == pytest.approx(reported["predicted_s"], abs=0.06)
    # The base arm's perplexity and multiple-choice scores come from the module's cache, so only the adapter's
    # scored tokens are predicted: fewer than a quarter of the first compare's four arms (two carry the prompt).
    first_tokens = before["predicted_s"]["score"] * before["rates"]["score_tokens_s"]
    assert stored["predicted_s"]["score"] * reported["rates"]["score_tokens_s"] < first_tokens / 4
    assert stored["predicted_s"]["classifier"] == 0  # its base replies are cached too


def test_a_short_budget_cuts_every_set_to_its_floor_and_says_so(pirate_run, tmp_path, one_thread):
    said: list[str] = []
    folder, report = run_compare(options(pirate_run, tmp_path / "out", tmp_path / "cache", max_time=1.0,
                                         arms="base,adapter"), say=said.append)
    sets = report.settings.prompt_sets
    # Every set that can reach a verdict at its floor where more was asked (12 prompts, 24 classifier replies);
    # the questions, asked at their floor (20), stay. Over the budget even so: the conversation and the long
    # answer, whose floor of one gives no verdict, are left out.
    assert (sets["single"].n, sets["multi"].n, sets["long"].n, sets["mc:commonsense_en"].n,
            sets["classifier"].n) == (12, 0, 0, 20, 24)
    assert report.settings.budget["fitted"] == {"singles": 12, "conversations": 0, "long": 0, "mc": 20,
                                                "classifier": 24}
    assert report.arms["adapter"].style.n == 12 and report.classifier.n_train + report.classifier.n_test == 48
    line = next(text for text in said if "time budget" in text)
    assert ("cut to 12 of 16 prompts, 0 of 2 conversations, 0 of 2 long prompts, 24 of 48 classifier replies"
            in line and "over the budget" in line)
    budget_warnings = [w for w in report.warnings if w.startswith("--max-time")]
    assert [w.split(":")[0] for w in budget_warnings] == ["--max-time 1s"] * 3
    assert "long prompts and conversations left out" in budget_warnings[1]
    rows = [json.loads(r) for r in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len({r["prompt_id"] for r in rows if r["kind"] == "single"}) == 12
    assert not [r for r in rows if r["kind"] != "single"]  # no conversation turn, no long answer
    assert (folder / "report.html").is_file()


def test_cli_rejects_a_bad_arm_in_one_line(pirate_run):
    result = subprocess.run(
        [sys.executable, "-m", "finetune", "compare", str(pirate_run.recipe_path), "--adapter",
         str(pirate_run.run_dir), "--arms", "base,promt"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --arms promt: unknown arm (expected base, prompt, adapter, adapter+prompt, adapter:<run> "
        "or adapter:<run>+prompt)"
    )


def test_arms_sharing_a_batch_answer_as_each_does_alone(pirate_run, one_thread):
    """Base, prompt and adapter rows in one mixed batch (PEFT's adapter_names) reply as each arm's own batch."""
    from finetune.compare.arms import parse_arms
    from finetune.compare.generation import ArmModels, GenSettings, generate_for_arms, generate_replies
    from finetune.recipe import load_recipe

    recipe = load_recipe(pirate_run.recipe_path)
    models = ArmModels(recipe, {"pirate": pirate_run.run_dir / "adapter"}, "fp32")
    arms = parse_arms("base,prompt,adapter,adapter+prompt", ["pirate"])
    messages = [[{"role": "user", "content": q}] for q in
                ("What is the capital of France?", "How do I boil an egg?", "Why is the sky blue?")]
    settings = GenSettings(max_new_tokens=24, long_max_new_tokens=24, batch_size=16, seed=0, repetition_penalty=1.3)
    alone = {arm.name: [r["text"] for r in generate_replies(models, arm, messages, recipe.system_prompt,
                                                            settings, 24)] for arm in arms}
    together = generate_for_arms(models, arms, messages, recipe.system_prompt, settings, 24)
    assert {name: [r["text"] for r in rows] for name, rows in together.items()} == alone
    assert alone["adapter"] != alone["base"]  # the arms answer differently, so a row given the wrong arm would show
