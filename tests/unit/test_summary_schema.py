"""summary.json is a fixed schema: the typed model, the documented table and what build_summary writes agree."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import BaseModel, ValidationError

from finetune.recipe import parse_recipe
from finetune.runs import Summary, build_summary

DOC = Path(__file__).resolve().parents[2] / "docs" / "runs.md"


def documented_fields() -> list[str]:
    """The first-column names of the summary.json table in docs/runs.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## `summary.json`"):]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    return re.findall(r"^\| `([a-z_0-9]+)` \|", section, flags=re.M)


def test_every_summary_field_is_documented_once_and_nothing_else():
    fields = documented_fields()
    assert len(fields) == len(set(fields)), "a field is documented twice"
    assert set(fields) == set(Summary.model_fields)


def test_nested_objects_are_documented_with_their_keys():
    text = DOC.read_text(encoding="utf-8")
    for name, info in Summary.model_fields.items():
        nested = [a for a in (info.annotation, *getattr(info.annotation, "__args__", ())) if
                  isinstance(a, type) and issubclass(a, BaseModel)]
        for model in nested:
            row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
            for key in model.model_fields:
                assert f'"{key}"' in row, (name, key)


def _inputs(tmp_path: Path, status: str = "completed", **changes):
    """build_summary's inputs: a real recipe; the run's counters as plain objects (no model involved)."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "completion": "a"}\n', encoding="utf-8")
    recipe = parse_recipe({"name": "demo", "dataset": {"path": str(data)}, "tracking": {"wandb": "disabled"}})
    (tmp_path / "adapter").mkdir()
    telemetry = SimpleNamespace(
        last_line={"seconds_per_step": 1.5, "tokens_per_s": 300.0, "peak_memory_mb": 900.0},
        elapsed=lambda: 12.345, ledger=SimpleNamespace(peak_memory_mb=1000.0),
        phases=SimpleNamespace(by_phase=lambda: {"load": 700.0, "train": 1000.0, "eval": 950.0, "save": None}),
        cost=lambda *_: {"amount": 1.2, "currency": "JPY", "basis": "rental", "estimated": True},
    )
    inputs = dict(
        recipe=recipe, run_dir=tmp_path,
        run_state=SimpleNamespace(status=status, message=None, first_step_s=3.21),
        telemetry=telemetry,
        trainer_state=SimpleNamespace(log_history=[{"loss": 2.5}, {"loss": 2.0}], global_step=6, max_steps=6,
                                      epoch=1.0, num_input_tokens_seen=4096),
        hw=SimpleNamespace(device="cpu", name="AMD EPYC", features=("avx512_bf16",)),
        precision="bf16", checkpointing=False, num_processes=1, strategy="none", eval_loss=1.9,
        started=datetime.now().astimezone(), dataset_sha256="0" * 64, train_rows=9, eval_rows=1,
    )
    inputs.update(changes)
    return inputs


def test_build_summary_writes_exactly_the_schema(tmp_path):
    summary = build_summary(**_inputs(tmp_path))
    assert list(summary) == list(Summary.model_fields)
    assert summary["schema_version"] == 3 and summary["train_loss"] == 2.0 and summary["peak_memory_mb"] == 1000.0
    assert summary["examples"] == {"train": 9, "eval": 1} and summary["adapter"] == str(tmp_path / "adapter")
    assert summary["cost"]["currency"] == "JPY" and summary["hardware"]["features"] == ["avx512_bf16"]
    Summary.model_validate(summary)  # what is written reads back as the model


@pytest.mark.parametrize("change", [{"status": "finished"}, {"strategy": "tensor-parallel"}, {"precision": "int3"}])
def test_a_value_outside_the_schema_is_refused(tmp_path, change):
    status = change.pop("status", "completed")
    with pytest.raises(ValidationError):
        build_summary(**_inputs(tmp_path, status, **change))


def test_build_summary_takes_keywords_only(tmp_path):
    with pytest.raises(TypeError):
        build_summary(*_inputs(tmp_path).values())


def test_a_non_finite_loss_is_written_as_null(tmp_path):
    state = SimpleNamespace(log_history=[{"loss": float("nan")}], global_step=7, max_steps=40, epoch=0.2,
                            num_input_tokens_seen=100)
    summary = build_summary(**_inputs(tmp_path, "diverged", trainer_state=state))
    assert summary["train_loss"] is None and summary["status"] == "diverged"
    json.dumps(summary, allow_nan=False)  # strict JSON: tools other than Python can read it


def test_the_phases_peaks_are_written_and_a_higher_one_is_the_run_peak(tmp_path):
    summary = build_summary(**_inputs(tmp_path))
    assert summary["peak_memory_by_phase_mb"] == {"load": 700.0, "train": 1000.0, "eval": 950.0, "save": None}
    (tmp_path / "b").mkdir()
    inputs = _inputs(tmp_path / "b")
    inputs["telemetry"].phases = SimpleNamespace(by_phase=lambda: {"load": 1400.0, "train": 1000.0, "eval": None,
                                                                   "save": 900.0})
    # Each phase restarts the peak counter: a loading peak above training's is still the run's peak.
    assert build_summary(**inputs)["peak_memory_mb"] == 1400.0
