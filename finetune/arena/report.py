"""Write arena results into a compare folder: the "arena" key of report.json and a report.md section."""

from __future__ import annotations

import html
import json
from pathlib import Path

from finetune import atomic
from finetune.arena.criteria import QUESTIONS
from finetune.arena.store import now
from finetune.errors import DataError

SECTION = "## Blind arena"


def arena_section(results: dict, source: str, database: str) -> dict | None:
    """Return the report.json "arena" value for one compare folder, or None if it has no votes."""
    boards = [b for b in results["boards"] if b["source"] == source]
    if not boards:
        return None
    criteria = {}
    for board in boards:
        criteria[board["criterion"]] = {
            "question": QUESTIONS.get(board["criterion"], board["criterion"]),
            **{k: v for k, v in board.items() if k not in ("source", "name", "criterion")},
        }
    return {"generated_at": now(), "database": database, "method": results["method"], "criteria": criteria}


NO_VOTES = "no arena votes yet (`finetune arena` collects them)"


def arena_reason(arena: dict | None) -> str:
    """The decision's arena line: each criterion's ratings and votes, or that there are none yet.

    compare's decision writes it when it decides; update_reports rewrites it when votes arrive later, so that
    report.json, report.md and report.html never say "no arena votes yet" above an arena section.
    """
    if not arena:
        return NO_VOTES
    boards = []
    for criterion, board in (arena.get("criteria") or {}).items():
        rows = ", ".join(f"{r['arm']} {r['rating']:.0f}" for r in board.get("arms", []))
        boards.append(f"{criterion}: {rows} ({board.get('votes', 0)} votes)")
    return "blind arena ratings: " + "; ".join(boards)


def _cell(text: object) -> str:
    """Make a value safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_section(arena: dict) -> str:
    """Render the "## Blind arena" markdown section from a report.json "arena" value."""
    method = arena["method"]
    lines = [
        SECTION,
        "",
        "People compared two answers to the same prompt side by side, in random order, without seeing "
        f"which arm wrote which. Ratings: {method['model']}, {method['scale']}, {method['anchor']}; "
        f"ties and \"both bad\" count as half a win for each side; {method['ci']}.",
        "",
    ]
    for criterion, board in arena["criteria"].items():
        lines += [
            f"### {board['question']} ({criterion})",
            "",
            f"{board['votes']} votes from {board['raters']} rater(s).",
            "",
            "| Arm | Rating | 95% CI | Votes | Wins | Losses | Ties | Both bad |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for row in board["arms"]:
            ci = f"{row['ci95'][0]:.0f} to {row['ci95'][1]:.0f}" if row["ci95"] else "n/a"
            lines.append(
                f"| {_cell(row['arm'])} | {row['rating']:.0f} | {ci} | {row['votes']} | {row['wins']} | "
                f"{row['losses']} | {row['ties']} | {row['both_bad']} |"
            )
        agreement = board.get("style_agreement")
        if agreement and agreement["votes"]:
            lo, hi = agreement["ci95"]
            lines += [
                "",
                f"Raters picked the answer with the higher automatic style score in "
                f"{agreement['rate']:.0%} of {agreement['votes']} decisive votes "
                f"(95% CI {lo:.0%} to {hi:.0%}).",
            ]
        lines.append("")
    return "\n".join(lines)


def replace_section(markdown: str, section: str) -> str:
    """Replace the "## Blind arena" section (up to the next "## " heading) or append it at the end."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        return markdown.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = lines[end:]
    return "\n".join(lines[:start] + section.rstrip("\n").splitlines() + ([""] + tail if tail else [])) + "\n"


def update_reports(results: dict, database: str) -> list[Path]:
    """Write the arena results into the report.json / report.md / report.html of each voted compare folder
    (the arena key, the markdown section, and the decision's arena line, which said no votes yet).

    Missing folders and files are skipped (never created); a model card elsewhere is never touched.
    """
    written = []
    for source in sorted({b["source"] for b in results["boards"]}):
        folder = Path(source)
        arena = arena_section(results, source, database)
        if arena is None or not folder.is_dir():
            continue
        report_json = folder / "report.json"
        new_reason = arena_reason(arena)
        old_reasons: list[str] = []
        if report_json.is_file():
            try:
                report = json.loads(report_json.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DataError(f"{report_json}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
            if not isinstance(report, dict):
                raise DataError(f"{report_json}: expected a JSON object at the top level")
            report["arena"] = arena
            reasons = (report.get("decision") or {}).get("reasons") or []
            for reason in reasons:
                if reason.get("topic") == "arena":  # the decision's own line, as compare words it
                    old_reasons.append(reason.get("text") or "")
                    reason["text"] = new_reason
            atomic.write_text(report_json, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            written.append(report_json)
        report_md = folder / "report.md"
        if report_md.is_file():
            text = report_md.read_text(encoding="utf-8")
            for old in old_reasons:
                text = text.replace(f"- arena: {old}\n", f"- arena: {new_reason}\n")
            atomic.write_text(report_md, replace_section(text, markdown_section(arena)))
            written.append(report_md)
        report_html = folder / "report.html"
        if report_html.is_file() and old_reasons:
            text = report_html.read_text(encoding="utf-8")
            for old in old_reasons:
                text = text.replace(f"<li>arena: {html.escape(old)}</li>", f"<li>arena: {html.escape(new_reason)}</li>")
            atomic.write_text(report_html, text)
            written.append(report_html)
    return written
