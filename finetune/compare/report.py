"""Writing a comparison: samples.jsonl, report.json, report.md, a self-contained report.html, the table."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from finetune import atomic
from finetune.compare import CompareError
from finetune.compare.analysis import METRICS
from finetune.compare.charts import drift_chart, metric_chart
from finetune.compare.schema import Difference, Estimate, Report

TABLE_METRICS = [
    "style",
    "marker_rate",
    "loop_share",
    "ended_share",
    "distinct_2",
    "content_ref",
    "content_base",
    "length_ratio",
    "perplexity",
    "style_multi",
    "loop_share_multi",
    "content_base_multi",
    "style_long",
    "loop_share_long",
    "ended_share_long",
    "content_base_long",
    "prompt_tokens",
    "latency_s",
    "s_per_token",
]
# Short labels keep the terminal table inside 80 columns with four arms.
_SHORT = {
    "style": "style",
    "marker_rate": "markers",
    "perplexity": "perplexity",
    "style_multi": "style, conv.",
    "style_long": "style, long",
    "loop_share": "loops",
    "ended_share": "ended at EOT",
    "distinct_2": "distinct-2",
    "content_ref": "content vs ref",
    "content_base": "content vs base",
    "length_ratio": "length / ref",
    "loop_share_multi": "loops, conv.",
    "content_base_multi": "content, conv.",
    "loop_share_long": "loops, long",
    "ended_share_long": "EOT, long",
    "content_base_long": "content, long",
    "prompt_tokens": "prompt tokens",
    "latency_s": "latency (s)",
    "s_per_token": "ms / token",
}
_DIGITS = {"prompt_tokens": 1, "latency_s": 2, "s_per_token": 3, "perplexity": 2, "completion_tokens": 1}


def fmt_estimate(est: Estimate | None, digits: int = 2) -> str:
    """'0.85 [0.78, 0.91]', or '-' when there is no estimate."""
    if est is None or est.mean is None:
        return "-"
    if est.ci_low is None or est.ci_high is None:
        return f"{est.mean:.{digits}f} (n={est.n}: not enough data for a CI)"
    return f"{est.mean:.{digits}f} [{est.ci_low:.{digits}f}, {est.ci_high:.{digits}f}]"


def metric_rows(report: Report, short: bool = False) -> list[tuple[str, list[Estimate | None], int]]:
    """Rows of (metric label, one estimate per arm, decimals) for every metric with data."""
    arms = report.settings.arms
    labels = _SHORT if short else {m.key: m.label for m in METRICS}
    rows = []
    for key in TABLE_METRICS:
        estimates = [getattr(report.arms[a], key) for a in arms]
        if any(e and e.mean is not None for e in estimates):
            rows.append((labels[key], estimates, _DIGITS.get(key, 2)))
    for name, section in report.multiple_choice.items():
        label = f"MC {name}" if short else f"MC accuracy ({name})"
        rows.append((label, [section.arms[a].accuracy for a in arms], 2))
    return rows


def _text_rows(report: Report) -> list[tuple[str, list[str]]]:
    """metric_rows with each estimate formatted on one line."""
    return [(label, [fmt_estimate(e, d) for e in ests]) for label, ests, d in metric_rows(report)]


def console_table(report: Report) -> Table:
    """The rich table the terminal shows: metrics down, arms across, mean [95% CI]."""
    table = Table(title=f"compare {report.run}: mean, 95% CI below", title_justify="left")
    table.add_column("metric")
    for arm in report.settings.arms:
        table.add_column(arm, justify="right")
    for label, estimates, digits in metric_rows(report, short=True):
        cells = []
        for est in estimates:
            if est is None or est.mean is None:
                cells.append(Text("-"))
                continue
            scale = 1
            if label == _SHORT["s_per_token"]:  # milliseconds read better in a narrow column
                scale, digits = 1000, 0
            elif label == _SHORT["perplexity"]:
                digits = 1
            cell = Text(f"{est.mean * scale:.{digits}f}")
            if est.ci_low is not None and est.ci_high is not None:
                cell.append(f"\n[{est.ci_low * scale:.{digits}f}, {est.ci_high * scale:.{digits}f}]", style="dim")
            cells.append(cell)
        table.add_row(label, *cells)
    return table


def _sets_line(report: Report) -> str:
    """'16 single, 3 multi, ...' for the header."""
    return ", ".join(f"{info.n} {name}" for name, info in report.settings.prompt_sets.items() if info.n)


def _penalty(penalty: float | None) -> str:
    """', repetition penalty 1.1' when one was applied."""
    return f", repetition penalty {penalty:g}" if penalty not in (None, 1, 1.0) else ""


def _settings_json(report: Report) -> str:
    """The settings block as indented JSON, keys as report.json has them."""
    return json.dumps(report.settings.model_dump(mode="json", exclude_unset=True), indent=2, ensure_ascii=False)


def markdown(report: Report) -> str:
    """report.md: verdicts, metrics, multiple choice, drift, cost, classifier, differences, settings."""
    s = report.settings
    arms = s.arms
    out = [
        f"# Compare: {report.run}",
        "",
        f"{report.created_at} · model `{s.model}` · arms {', '.join(arms)} · seed {s.seed} · "
        f"{'sampling' if s.do_sample else 'greedy'}{_penalty(s.repetition_penalty)}, max_new_tokens "
        f"{s.max_new_tokens} (long {s.long_max_new_tokens})",
        "",
        f"Prompt sets: {_sets_line(report)}.",
        "",
    ]
    if s.system_prompt:
        out += [
            f"System prompt ({s.system_prompt_source}):",
            "",
            "> " + s.system_prompt.replace("\n", "\n> "),
            "",
        ]
    out = out[:2] + decision_markdown(report) + out[2:]
    out += ["## Verdicts", ""] + [f"- **{v}**" if v.startswith("WARNING") else f"- {v}" for v in report.verdicts]
    out += ["", _statistics_line(report), ""]
    out += [
        "## Metrics per arm (mean [95% CI])",
        "",
        "| metric | " + " | ".join(arms) + " |",
        "|---|" + "---:|" * len(arms),
    ]
    out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in _text_rows(report)]
    out.append("")
    if report.multiple_choice:
        out += ["## Multiple choice", ""]
        for mc in report.multiple_choice.values():
            out += [
                f"`{mc.file}`, {mc.n} questions; scoring: {mc.scoring}.",
                "",
                "| arm | accuracy | accuracy (sum) |",
                "|---|---:|---:|",
            ]
            out += [
                f"| {a} | {fmt_estimate(v.accuracy)} | {fmt_estimate(v.accuracy_sum)} |" for a, v in mc.arms.items()
            ]
            out.append("")
    drift = report.drift
    if drift.multi:
        turns = max(len(v.by_turn) for v in drift.multi.values())
        out += [
            "## Drift over a conversation (style score by user turn)",
            "",
            "| arm | " + " | ".join(f"turn {t + 1}" for t in range(turns)) + " | change |",
            "|---|" + "---:|" * (turns + 1),
        ]
        for arm, conv in drift.multi.items():
            cells = [fmt_estimate(t.style) for t in conv.by_turn]
            cells += ["-"] * (turns - len(cells))
            out.append(f"| {arm} | " + " | ".join(cells) + f" | {fmt_estimate(conv.change)} |")
        out.append("")
    if drift.long:
        out += [
            "## Drift within long answers (style score)",
            "",
            "| arm | first third | last third | change |",
            "|---|---:|---:|---:|",
        ]
        out += [
            f"| {a} | {fmt_estimate(v.first_third.style)} | {fmt_estimate(v.last_third.style)} | "
            f"{fmt_estimate(v.change)} |"
            for a, v in drift.long.items()
        ]
        out.append("")
    out += _cost_markdown(report)
    c = report.classifier
    out += [
        "## Style classifier",
        "",
        (
            f"Logistic regression on all-MiniLM-L6-v2 embeddings, persona training replies vs the base "
            f"model's "
            f"replies to the same prompts: held-out accuracy {c.accuracy:.2f} ({c.n_train} train, "
            f"{c.n_test} test)."
            if c.available
            else f"Not trained: {c.reason}."
        ),
        "",
    ]
    out += [
        "## Paired differences (a vs b; ratio a/b for perplexity)",
        "",
        "| metric | a | b | difference [95% CI] | n | p | test | significant |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    out += [
        f"| {d.label} | {d.a} | {d.b} | {fmt_estimate(d)} | {d.n} | {_p(d)} | {d.test or '-'} | {_significant(d)} |"
        for d in report.differences
    ]
    out.append("")
    if report.warnings:
        out += ["## Warnings", ""] + [f"- {w}" for w in report.warnings] + [""]
    out += ["## Settings", "", "```json", _settings_json(report), "```", ""]
    return "\n".join(out)


def decision_markdown(report: Report, heading: str = "##") -> list[str]:
    """The "Adapter or prompt?" section: the recommendation in bold, then one line of evidence per topic."""
    decision = report.decision
    if decision is None:
        return []
    out = [f"{heading} Adapter or prompt?", "", f"**{decision.headline}**", ""]
    out += [f"- {r.topic}: {r.text}" for r in decision.reasons]
    return out + [""]


def _statistics_line(report: Report) -> str:
    """How significance was decided, for the foot of the verdicts."""
    st = report.settings.statistics or {}
    if not st:
        return "Significance: the 95% CI excludes no difference (uncorrected)."
    return (
        f"Significance: {st['paired']}; {st['multiple_choice']}; {st['correction']} "
        f"({st['family_size']} tests, family-wise error {st['alpha']:.0%}). Per-arm intervals: {st['per_arm']}. "
        f"\"Detectable at this n\": {st['mde']}. A loop: {st['loop']}."
    )


def _p(d: Difference) -> str:
    """'0.003 (Holm 0.03)' for the differences table."""
    if d.p_value is None:
        return "-"
    return f"{d.p_value:.2g}" + (f" (Holm {d.p_holm:.2g})" if d.p_holm is not None else "")


def _significant(d: Difference) -> str:
    """'yes: adapter' or 'no' for the differences table."""
    return f"yes: {d.better}" if d.significant else "no"


def _cost_markdown(report: Report) -> list[str]:
    """The cost section of report.md."""
    cost = report.cost
    out = ["## Cost", ""]
    if cost.price:
        p = cost.price
        out.append(f"- Input price: {p.per_mtok:g} {p.currency} per million tokens ({p.source}).")
    if cost.system_prompt_tokens is not None:
        out.append(f"- The system prompt adds {cost.system_prompt_tokens:.1f} input tokens to every request.")
    for arm, entry in cost.adapters.items():
        if entry.text:
            out.append(f"- {entry.text if entry.text.startswith(arm) else arm + ': ' + entry.text}")
    out.append("")
    return out


_CSS = (
    "body{font-family:system-ui,'Noto Sans CJK JP','Hiragino Sans',sans-serif;max-width:1100px;"
    "margin:2em auto;"
    "padding:0 1em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:.25em .6em;font-size:.9em}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}"
    "blockquote{color:#555;border-left:3px solid #ccc;margin:0;padding-left:1em}li{margin:.2em 0}"
    "li.warn{color:#b00}"
)


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    """An escaped HTML table; every column after the first is numeric."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i else ''}>{html.escape(c)}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def to_html(report: Report, charts: dict[str, str | None]) -> str:
    """report.html: one file, verdicts, tables and charts embedded as base64 PNGs (all text escaped)."""
    s = report.settings
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Compare {e(report.run)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Compare: {e(report.run)}</h1>",
        f"<p>{e(report.created_at)} · model <code>{e(s.model)}</code> · seed {s.seed} · "
        f"prompt sets: {e(_sets_line(report))}</p>",
    ]
    if s.system_prompt:
        parts.append(
            f"<p>System prompt ({e(s.system_prompt_source)}):</p><blockquote>{e(s.system_prompt)}</blockquote>"
        )
    if report.decision:
        parts.append(
            f"<h2>Adapter or prompt?</h2><p><strong>{e(report.decision.headline)}</strong></p><ul>"
            + "".join(f"<li>{e(r.topic)}: {e(r.text)}</li>" for r in report.decision.reasons)
            + "</ul>"
        )
    parts.append(
        "<h2>Verdicts</h2><ul>"
        + "".join(
            f"<li class=warn><strong>{e(v)}</strong></li>" if v.startswith("WARNING") else f"<li>{e(v)}</li>"
            for v in report.verdicts
        )
        + f"</ul><p>{e(_statistics_line(report))}</p>"
    )
    parts.append("<h2>Metrics per arm (mean [95% CI])</h2>")
    parts.append(_table_html(["metric", *s.arms], [[label, *cells] for label, cells in _text_rows(report)]))
    if charts.get("metrics"):
        parts.append(f"<img alt='metrics with 95% CI' src='data:image/png;base64,{charts['metrics']}'>")
    if charts.get("drift"):
        parts.append("<h2>Drift</h2>")
        parts.append(f"<img alt='style drift' src='data:image/png;base64,{charts['drift']}'>")
    cost = _cost_markdown(report)[2:]
    parts.append("<h2>Cost</h2><ul>" + "".join(f"<li>{e(line[2:])}</li>" for line in cost if line) + "</ul>")
    c = report.classifier
    parts.append(
        "<h2>Style classifier</h2><p>"
        + e(
            f"held-out accuracy {c.accuracy:.2f} ({c.n_train} train, {c.n_test} test replies)"
            if c.available
            else f"not trained: {c.reason}"
        )
        + "</p>"
    )
    parts.append("<h2>Paired differences</h2>")
    parts.append(
        _table_html(
            ["metric", "a", "b", "difference [95% CI]", "n", "p", "test", "significant"],
            [
                [d.label, d.a, d.b, fmt_estimate(d), str(d.n), _p(d), d.test or "-", _significant(d)]
                for d in report.differences
            ],
        )
    )
    if report.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in report.warnings) + "</ul>")
    parts.append(f"<h2>Settings</h2><pre>{e(_settings_json(report))}</pre></body></html>")
    return "\n".join(parts)


def report_json(report: Report) -> str:
    """report.json's text: the model's own JSON.

    Fields never set are left out, as before the report was typed: `p_holm` only on the verdicts' tests,
    `arena` only once `finetune arena` has written it.
    """
    return report.model_dump_json(indent=2, exclude_unset=True) + "\n"


def check_compare_target(out_dir: Path, force: bool) -> None:
    """Refuse an --out that holds anything but an earlier compare, and an earlier compare without --force.

    An earlier compare's samples may have arena votes cast on them (the votes name the folder): replacing
    them is the user's call. A run folder or a folder of other things is never replaced.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise CompareError(f"{out_dir}: exists and is not a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if (out_dir / "recipe.yaml").is_file() or (out_dir / "summary.json").is_file():
        raise CompareError(f"{out_dir}: is a run folder; compare will not write into it (choose another --out)")
    if not (out_dir / "report.json").is_file():
        raise CompareError(f"{out_dir}: not empty and not an earlier compare (no report.json); choose a new or "
                           "empty --out")
    if not force:
        raise CompareError(f"{out_dir}: holds an earlier compare; pass --force to replace it (arena votes on "
                           "its samples would then name replaced samples) or choose another --out")


def write_outputs(out_dir: Path, report: Report, samples: list[dict[str, Any]]) -> None:
    """Write samples.jsonl, report.json, report.md and report.html into `out_dir`, the folder replaced whole
    and at once (an earlier compare there, allowed by check_compare_target, is never half overwritten)."""
    try:
        charts = {"metrics": metric_chart(report), "drift": drift_chart(report)}
    except Exception as exc:  # a chart must never cost the user the report
        charts = {}
        report.warnings.append(f"charts not drawn: {exc}")
    with atomic.staged_dir(out_dir) as staging:
        (staging / "samples.jsonl").write_text(
            "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8"
        )
        (staging / "report.json").write_text(report_json(report), encoding="utf-8")
        (staging / "report.md").write_text(markdown(report), encoding="utf-8")
        (staging / "report.html").write_text(to_html(report, charts), encoding="utf-8")
