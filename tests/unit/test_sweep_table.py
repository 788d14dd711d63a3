"""scripts/sweep.py reads a run's summary.json and compare report.json into one table row."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location("sweep", ROOT / "scripts" / "sweep.py")
SWEEP = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = SWEEP
_SPEC.loader.exec_module(SWEEP)


def _est(mean: float | None) -> dict:
    """A report.json estimate with only its mean filled in."""
    return {"mean": mean, "ci_low": None, "ci_high": None, "n": 4}


def test_row_takes_the_adapter_arm_and_subtracts_the_prompt_arm() -> None:
    summary = {"status": "completed", "steps": 120, "wall_time_s": 300.0, "eval_loss": 1.25}
    report = {
        "arms": {
            "prompt": {
                "marker_rate": _est(0.5), "style": _est(0.4), "loop_share": _est(0.25), "content_ref": _est(0.6)
            },
            "adapter+prompt": {"marker_rate": _est(1.0), "content_ref": _est(0.1)},
            "adapter": {
                "marker_rate": _est(0.75),
                "style": _est(0.9),
                "loop_share": _est(0.0),
                "ended_share": _est(1.0),
                "content_ref": _est(0.5),
            },
        },
        "decision": {"recommendation": "adapter"},
    }
    row = SWEEP.result_row("lr2e-04-ep3", 2e-4, 3, summary, report)
    assert row["train_minutes"] == 5.0 and row["eval_loss"] == 1.25 and row["steps"] == 120
    assert (row["marker_rate"], row["style"], row["loop_share"], row["ended_share"]) == (0.75, 0.9, 0.0, 1.0)
    assert abs(row["content_vs_prompt"] - (0.5 - 0.6)) < 1e-12
    assert row["prompt_loop_share"] == 0.25 and row["decision"] == "adapter"


def test_missing_report_gives_dashes_not_a_crash() -> None:
    row = SWEEP.result_row("lr1e-04-ep1", 1e-4, 1, None, None)
    assert row["marker_rate"] is None and row["content_vs_prompt"] is None
    table = SWEEP.markdown_table([row])
    assert table.splitlines()[2].startswith("| lr1e-04-ep1 | 0.0001 | 1 | - |")
    assert SWEEP.run_name(3e-4, 2) == "lr3e-04-ep2"
