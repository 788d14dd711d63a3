#!/usr/bin/env python
"""Sweep learning rate x epochs for a recipe: train each, compare each, one table of style and quality.

    python scripts/sweep.py recipes/pirate-smollm2.yaml --name lr-epochs \\
        --lr 1e-4,2e-4,3e-4 --epochs 1,2,3 [--max-time 20m] [--samples 34] [--set KEY=VALUE ...]

Each grid point runs the real CLI, as a user would: `finetune train RECIPE --output-dir
outputs/sweep-<name>/<run> --set training.learning_rate=LR --set training.epochs=E ...`, then
`finetune compare <run>/recipe.yaml --adapter <run> --arms base,prompt,adapter --samples N --out <run>/compare`
(the run's resolved recipe, so compare holds out exactly the rows training held out). It then reads
each summary.json and compare/report.json and writes outputs/sweep-<name>/results.json and results.md:
style (marker rate, classifier), loop share, ended-at-end-of-turn share, content kept (adapter minus the
prompt arm), held-out loss and train minutes. A finished run (completed, stopped at --max-time, diverged)
or compare is kept when the sweep is started again, an interrupted run resumes from its checkpoint;
--force retrains and recompares everything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finetune import atomic  # noqa: E402

# Run statuses (summary.json) that retraining would not change: kept when the sweep starts again.
FINISHED = {"completed", "time_budget", "diverged"}
# Columns of the table: (header, how to get the figure from one result row).
COLUMNS = [
    ("run", "run"),
    ("lr", "learning_rate"),
    ("epochs", "epochs"),
    ("steps", "steps"),
    ("train min", "train_minutes"),
    ("held-out loss", "eval_loss"),
    ("marker rate", "marker_rate"),
    ("style", "style"),
    ("loop share", "loop_share"),
    ("ended share", "ended_share"),
    ("content kept", "content_ref"),
    ("content vs prompt", "content_vs_prompt"),
    ("prompt marker rate", "prompt_marker_rate"),
    ("prompt loop share", "prompt_loop_share"),
    ("MC adapter", "mc_adapter"),
    ("MC base", "mc_base"),
    ("decision", "decision"),
]


def floats(text: str) -> list[float]:
    """A comma-separated list of numbers."""
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    """A comma-separated list of whole numbers."""
    return [int(x) for x in text.split(",") if x.strip()]


def run_name(lr: float, epochs: int) -> str:
    """The folder name of one grid point, e.g. lr2e-04-ep3."""
    return f"lr{lr:.0e}-ep{epochs}"


def _run(cmd: list[str], log: Path) -> int:
    """Run one CLI command, its output both shown and appended to the sweep's log."""
    print("$ " + " ".join(cmd), flush=True)
    with log.open("a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            fh.write(line)
        return proc.wait()


def _read_json(path: Path) -> dict | None:
    """A JSON file's object, or None when it is missing."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _mean(arm: dict | None, key: str) -> float | None:
    """The mean of one per-arm estimate of report.json (None where the arm or metric is absent)."""
    estimate = (arm or {}).get(key)
    return None if estimate is None else estimate.get("mean")


def _mc_accuracy(report: dict | None, arm: str | None) -> float | None:
    """An arm's multiple-choice accuracy, the mean over the report's sets (None when not measured)."""
    accs = [
        _mean(mc.get("arms", {}).get(arm), "accuracy")
        for mc in ((report or {}).get("multiple_choice") or {}).values()
    ]
    accs = [a for a in accs if a is not None]
    return sum(accs) / len(accs) if accs and arm else None


def result_row(name: str, lr: float, epochs: int, summary: dict | None, report: dict | None) -> dict:
    """One table row from a run's summary.json and its compare report.json."""
    arms = (report or {}).get("arms", {})
    adapter_name = next((k for k in arms if k.startswith("adapter") and "+prompt" not in k), None)
    adapter = arms.get(adapter_name) if adapter_name else None
    prompt = arms.get("prompt")
    content, content_prompt = _mean(adapter, "content_ref"), _mean(prompt, "content_ref")
    wall = (summary or {}).get("wall_time_s")
    return {
        "run": name,
        "learning_rate": lr,
        "epochs": epochs,
        "status": (summary or {}).get("status"),
        "steps": (summary or {}).get("steps"),
        "train_minutes": None if wall is None else round(wall / 60, 2),
        "eval_loss": (summary or {}).get("eval_loss"),
        "marker_rate": _mean(adapter, "marker_rate"),
        "style": _mean(adapter, "style"),
        "loop_share": _mean(adapter, "loop_share"),
        "ended_share": _mean(adapter, "ended_share"),
        "content_ref": content,
        "content_vs_prompt": None if content is None or content_prompt is None else content - content_prompt,
        "prompt_marker_rate": _mean(prompt, "marker_rate"),
        "prompt_loop_share": _mean(prompt, "loop_share"),
        "mc_adapter": _mc_accuracy(report, adapter_name),
        "mc_base": _mc_accuracy(report, "base"),
        "decision": ((report or {}).get("decision") or {}).get("recommendation"),
    }


def _cell(value: object) -> str:
    """A table cell: numbers to 3 decimals, missing as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value else f"{value:.3f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r.get(k)) for _, k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Train and compare every grid point, then write and print the table; exit 1 if any step failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--name", required=True, help="The sweep's folder: outputs/sweep-<name>/.")
    parser.add_argument("--lr", type=floats, default=floats("1e-4,2e-4,3e-4"), help="Learning rates, a,b,c.")
    parser.add_argument("--epochs", type=ints, default=ints("1,2,3"), help="Epoch counts, a,b,c.")
    parser.add_argument("--max-time", help="Cap each run (training.max_time, e.g. 20m).")
    parser.add_argument("--samples", type=int, default=None, help="compare --samples (default: all held out).")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="Extra KEY=VALUE for train.")
    parser.add_argument("--compare-args", default="", help="Extra compare options, one string.")
    parser.add_argument("--outputs", type=Path, default=ROOT / "outputs", help="Where sweep-<name>/ goes.")
    parser.add_argument("--force", action="store_true", help="Retrain and recompare finished grid points.")
    args = parser.parse_args(argv)

    sweep_dir = args.outputs / f"sweep-{args.name}"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log = sweep_dir / "sweep.log"
    finetune = [sys.executable, "-m", "finetune"]
    rows, failed = [], []
    for lr in args.lr:
        for epochs in args.epochs:
            name = run_name(lr, epochs)
            run_dir = sweep_dir / name
            sets = [f"training.learning_rate={lr}", f"training.epochs={epochs}", *args.sets]
            if args.max_time:
                sets.append(f"training.max_time={args.max_time}")
            summary = _read_json(run_dir / "summary.json") or {}
            if args.force or summary.get("status") not in FINISHED:
                # An interrupted run (Ctrl-C, SIGTERM) continues from its checkpoint; anything else starts over.
                again = "--resume" if summary.get("status") == "interrupted" and not args.force else "--force"
                cmd = [*finetune, "train", str(args.recipe), "--output-dir", str(run_dir), again]
                cmd += [x for s in sets for x in ("--set", s)]
                # A failed or diverged run may still leave an adapter; compare whatever was saved.
                _run(cmd, log)
                summary = _read_json(run_dir / "summary.json")
            compare_dir = run_dir / "compare"
            report = None if args.force else _read_json(compare_dir / "report.json")
            if report is None and (run_dir / "adapter").is_dir():
                cmd = [*finetune, "compare", str(run_dir / "recipe.yaml"), "--adapter", str(run_dir)]
                cmd += ["--arms", "base,prompt,adapter", "--out", str(compare_dir)]
                cmd += ["--force"] if args.force else []  # an earlier compare there is replaced, as asked
                cmd += ["--samples", str(args.samples)] if args.samples else []
                cmd += args.compare_args.split()
                if _run(cmd, log) == 0:
                    report = _read_json(compare_dir / "report.json")
            if report is None:
                failed.append(name)
            rows.append(result_row(name, lr, epochs, summary, report))
            # Written after every point, so a long sweep can be read while it runs.
            atomic.write_json(sweep_dir / "results.json", {"recipe": str(args.recipe), "rows": rows})
            atomic.write_text(sweep_dir / "results.md", markdown_table(rows))
    print(markdown_table(rows))
    print(f"results: {sweep_dir / 'results.md'} and results.json; log: {log}")
    if failed:
        print(f"no compare report for: {', '.join(failed)} (see {log})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
