"""Arena votes written into a compare folder: the decision's arena line follows them in every report file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from finetune.arena.ratings import build_results
from finetune.arena.report import NO_VOTES, SECTION, update_reports
from finetune.compare.report import to_html
from finetune.compare.schema import read_report

DATA = Path(__file__).parent / "data"


def test_the_decisions_arena_line_names_the_votes_once_they_exist(tmp_path: Path) -> None:
    folder = tmp_path / "cmp"
    folder.mkdir()
    shutil.copy(DATA / "compare_report.json", folder / "report.json")
    shutil.copy(DATA / "compare_report.md", folder / "report.md")
    (folder / "report.html").write_text(to_html(read_report(folder / "report.json"), {}), encoding="utf-8")
    assert f"- arena: {NO_VOTES}" in (folder / "report.md").read_text()

    rows = [{"source": str(folder), "run": "r", "criterion": "style", "rater": f"u{i % 3}",
             "arm_left": "adapter", "arm_right": "base", "choice": "a" if i % 4 else "b",
             "style_left": None, "style_right": None} for i in range(10)]
    written = update_reports(build_results(rows, rounds=50), "db.sqlite")
    assert written == [folder / "report.json", folder / "report.md", folder / "report.html"]

    report = json.loads((folder / "report.json").read_text())
    line = next(r["text"] for r in report["decision"]["reasons"] if r["topic"] == "arena")
    assert line.startswith("blind arena ratings: style: adapter ") and line.endswith("(10 votes)"), line
    md = (folder / "report.md").read_text()
    assert NO_VOTES not in md and f"- arena: {line}\n" in md and md.count(SECTION) == 1
    html = (folder / "report.html").read_text()
    assert "no arena votes yet" not in html and "blind arena ratings: style: adapter" in html
    # the report still reads through compare's schema, and compare's own decision words it the same way
    from finetune.compare.decision import decide

    again = decide(read_report(folder / "report.json"))
    assert next(r.text for r in again.reasons if r.topic == "arena") == line
