"""`make demo`'s side-by-side table keeps its width when the output is a log, not a terminal."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_is_120_columns_wide_when_output_is_not_a_terminal(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    reply = "Arr, matey! " * 12
    rows = [
        {"kind": "single", "arm": arm, "prompt_id": f"p{i}", "text": f"{arm} {reply}",
         "conversation": [{"role": "user", "content": f"Question number {i} about the sea and ships?"}]}
        for i in range(3) for arm in ("base", "prompt", "adapter")
    ]
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    _demo_module().side_by_side(samples)
    lines = capsys.readouterr().out.splitlines()
    assert any("Question number 0" in line for line in lines)
    # finetune's console: 120 columns off a terminal (pytest's capture, a log); rich's own default there is 80,
    # where four columns of replies wrap to a few words each.
    from finetune.console import console

    assert max(len(line) for line in lines) == console.width
