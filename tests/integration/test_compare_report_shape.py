"""report.json's keys and structure from a small real comparison, pinned against the file it wrote before the
report became a typed object (issue 17 item 8): the typed report must write the same JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from finetune.recipe import parse_recipe
from finetune.train import train
from tests.conftest import recipe_dict

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "datasets" / "eval"
SHAPE = Path(__file__).parent / "data" / "compare_report_shape.json"
ARMS = "base,prompt,adapter,adapter+prompt"


def shape(value: object) -> object:
    """The JSON's structure: every key at every depth, list items one by one, leaves by type (not value)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else "string"


def same_shape(got: object, want: object, where: str = "report") -> None:
    """Keys and list lengths must match at every depth; leaf types too, unless one side is null (a figure
    that another machine's replies may leave without an interval or a winner). Key order is not compared:
    a difference's keys come in the schema's field order now (estimate first), as JSON readers allow."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), (where, sorted(got), sorted(want))
        for key in want:
            same_shape(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            same_shape(a, b, f"{where}[{i}]")
    else:
        assert not isinstance(got, (dict, list)), (where, got, want)
        assert "null" in (got, want) or got == want, (where, got, want)


def volatile(data: dict) -> dict:
    """The report without what differs between any two runs: library versions, the cache's hits, timings."""
    data["settings"]["versions"] = {}
    data["settings"]["cache"]["hits"] = []
    data["timings"] = {}
    return data


@pytest.fixture(scope="module")
def tiny_report(tiny_llama, pirate_rows, tmp_path_factory) -> Path:
    """Every section of a report from a 2-step tiny adapter: four arms, conversations, long answers, MC, cost."""
    import torch

    from finetune.compare.run import CompareOptions, run_compare

    root = tmp_path_factory.mktemp("shape")
    spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=2)
    spec.update(name="tiny-pirate", system_prompt="You are a pirate. Say arr.",
                style={"markers": [r"\barr+\b", r"\bmatey\b"]},
                cost={"hourly_rate": {"amount": 3600.0, "currency": "JPY"}})
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores
    try:
        train(parse_recipe(spec), output_dir=root / "tiny-pirate", say=lambda *_: None)
        opts = CompareOptions(
            recipe_path=recipe_path, adapters=[str(root / "tiny-pirate")], arms=ARMS, samples=4,
            conversations=EVAL / "pirate_conversations.jsonl", turns=2, max_conversations=2,
            long_file=EVAL / "long_prompts.jsonl", max_long=2, max_new_tokens=8, long_max_new_tokens=12,
            mc_files=[EVAL / "commonsense_en.jsonl"], mc_samples=4, classifier_samples=12, out=root / "out",
            use_cache=False, batch_size=4, dtype="fp32", price_per_mtok=1.0,
        )
        folder, _ = run_compare(opts, say=lambda *_: None)
    finally:
        torch.set_num_threads(before)
    return folder


def test_report_json_keeps_its_keys_and_structure(tiny_report):
    data = volatile(json.loads((tiny_report / "report.json").read_text(encoding="utf-8")))
    got = shape(data)
    if not SHAPE.is_file():  # the first run records the structure for review
        SHAPE.parent.mkdir(exist_ok=True)
        SHAPE.write_text(json.dumps(got, indent=1) + "\n", encoding="utf-8")
        pytest.fail(f"{SHAPE} written: review it and commit it")
    want = json.loads(SHAPE.read_text(encoding="utf-8"))
    assert list(got) == list(want)  # the top level in the order it always had
    same_shape(got, want)


def test_an_earlier_compare_is_replaced_only_with_force_and_whole(tiny_report, tmp_path):
    """--out onto an earlier compare overwrote it silently (arena votes name the folder); a mistyped --price
    was refused only after every prompt had been generated and scored."""
    import shutil

    from finetune.compare import CompareError
    from finetune.compare.run import CompareOptions, run_compare

    out = tmp_path / "out"
    shutil.copytree(tiny_report, out)
    (out / "left-over.txt").write_text("from the earlier compare", encoding="utf-8")
    before = (out / "report.json").read_bytes()
    opts = CompareOptions(
        recipe_path=tiny_report.parent / "recipe.yaml", adapters=[str(tiny_report.parent / "tiny-pirate")],
        arms="base,adapter", samples=4, mc_files=[], classifier_samples=12, max_new_tokens=8, out=out,
        use_cache=False, batch_size=4, dtype="fp32", price_per_mtok=1.0,
    )
    said: list[str] = []
    with pytest.raises(CompareError, match=f"{out}: holds an earlier compare; pass --force"):
        run_compare(opts, say=said.append)
    with pytest.raises(CompareError, match="--price nope: not in"):
        run_compare(CompareOptions(**{**opts.__dict__, "price": "nope", "price_per_mtok": None,
                                      "out": tmp_path / "new"}), say=said.append)
    assert not said, "a refusal came after the work began"
    assert (out / "report.json").read_bytes() == before and not (tmp_path / "new").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(CompareError, match="not empty and not an earlier compare"):
        run_compare(CompareOptions(**{**opts.__dict__, "out": tmp_path / "other", "force": True}))

    folder, report = run_compare(CompareOptions(**{**opts.__dict__, "force": True}), say=said.append)
    assert folder == out and sorted(p.name for p in out.iterdir()) == [
        "report.html", "report.json", "report.md", "samples.jsonl"]
    assert list(json.loads((out / "report.json").read_text(encoding="utf-8"))["arms"]) == ["base", "adapter"]
