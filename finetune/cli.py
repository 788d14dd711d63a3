"""The `finetune` command line: the app, its command table, and the one error funnel. No logic lives here.

The run-folder commands (train, runs, show, recipe show, data check) are defined here; every other
command lives in its feature's cli module and is named in `FEATURE_COMMANDS`, imported only when that
command runs (or `finetune --help` lists it), so `finetune train` never imports fastapi.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from finetune.console import console, err_console, say
from finetune.errors import FinetuneError

# command name -> "module:attribute": a command function or a typer app (a group of commands).
FEATURE_COMMANDS = {
    "estimate": "finetune.estimate.cli:estimate_command",
    "compare": "finetune.compare.cli:compare",
    "arena": "finetune.arena.cli:app",
    "export": "finetune.export_cli:export_command",
    "merge-adapters": "finetune.export_cli:merge_adapters_command",
    "chat": "finetune.chat_cli:chat_command",
    "generate": "finetune.chat_cli:generate_command",
    "distill": "finetune.distill.cli:distill",
}


class _FeatureGroup(TyperGroup):
    """A typer group that imports a feature's cli module only when one of its commands is needed."""

    def _load(self, name: str) -> None:
        if name in self.commands or name not in FEATURE_COMMANDS:
            return
        module, _, attribute = FEATURE_COMMANDS[name].partition(":")
        target = getattr(importlib.import_module(module), attribute)
        if not isinstance(target, typer.Typer):
            single = typer.Typer(add_completion=False)
            single.command(name)(target)
            target = single
        command = typer.main.get_command(target)
        command.name = name
        self.commands[name] = command

    def list_commands(self, ctx: Any) -> list[str]:  # noqa: D102 (click's hook)
        return [*self.commands, *(name for name in FEATURE_COMMANDS if name not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:  # noqa: D102 (click's hook)
        self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:  # noqa: D102 (click's hook)
        if args and args[0] not in self.commands and args[0] not in FEATURE_COMMANDS:
            for name in FEATURE_COMMANDS:  # a typo: let typer's did-you-mean see every command name
                self._load(name)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="finetune",
    cls=_FeatureGroup,
    help="LoRA/QLoRA fine-tuning on one GPU (or a CPU), with estimates, A/B tests and a blind arena.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
recipe_app = typer.Typer(help="Inspect recipes.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(data_app, name="data")


@app.command("train")
def train_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Run folder (default outputs/<name>)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: KEY=VALUE (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run; start even if it won't fit."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    until: str | None = typer.Option(None, "--until", help="Stop (and save) before this local time, HH:MM."),
    num_processes: int = typer.Option(1, "--num-processes", help="Train on N processes via accelerate launch."),
) -> None:
    """Train a LoRA adapter from a recipe."""
    from finetune.errors import RunError
    from finetune.recipe import load_recipe

    if max_steps is not None and max_steps < 1:  # typer's own min=1 refusal is a five-line box
        raise RunError(f"--max-steps {max_steps}: expected a positive number of steps")
    if num_processes < 1:  # 0 and -1 trained one process as if nothing was wrong
        raise RunError(f"--num-processes {num_processes}: expected 1 or more processes")
    loaded = load_recipe(_recipe_file(recipe), set_)
    from finetune.recipe import check_dataset_path

    check_dataset_path(loaded, recipe, set_)
    if num_processes > 1:
        from finetune.launch import launch

        raise typer.Exit(launch(recipe, loaded, num_processes, sys.argv))
    from finetune.runs import STATUS_EXIT
    from finetune.train import train

    summary = train(
        loaded, output_dir=output_dir, max_steps=max_steps, force=force, resume=resume, until=until,
        say=lambda text: console.print(text, highlight=False),
    )
    if "steps" in summary:
        _print_summary(summary)
    code = STATUS_EXIT.get(summary["status"], 1)
    from finetune.launch import LAUNCHED_ENV

    if summary["status"] == "interrupted" and os.environ.get(LAUNCHED_ENV):
        code = 0  # a rank that stopped and saved as asked: the parent `finetune train` reports the 130 (launch.py)
    raise typer.Exit(code)


def _print_summary(summary: dict) -> None:
    """A few lines about a finished (or stopped) run."""
    from finetune.telemetry import format_duration

    loss = summary.get("train_loss")
    eval_loss = summary.get("eval_loss")
    parts = [
        f"status {summary['status']}",
        f"steps {summary['steps']}",
        f"train loss {loss:.4f}" if loss is not None else "",
        f"eval loss {eval_loss:.4f}" if eval_loss is not None else "",
        f"wall {format_duration(summary['wall_time_s'])}",
        f"peak {summary['peak_memory_mb']:.0f} MB",
    ]
    if summary.get("cost"):
        from finetune.cost import format_money

        parts.append(f"cost {format_money(summary['cost']['amount'], summary['cost']['currency'])}")
    console.print("  ".join(p for p in parts if p), highlight=False, soft_wrap=True)
    if summary.get("message"):
        console.print(summary["message"], highlight=False)
    if summary.get("adapter"):
        console.print(f"adapter: {summary['adapter']}", highlight=False)


@recipe_app.command("show")
def recipe_show_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: KEY=VALUE."),
) -> None:
    """Print the resolved recipe, every default filled in."""
    from finetune.recipe import load_recipe

    console.print(load_recipe(_recipe_file(recipe), set_).to_yaml(), highlight=False, end="")


def _recipe_file(path: Path) -> Path:
    """The recipe path, refused in one line when it names a folder (load_recipe would say "not found")."""
    if path.is_dir():
        from finetune.errors import RecipeError

        raise RecipeError(f"{path}: a folder, not a recipe file (name one of its .yaml files)")
    return path


@data_app.command("check")
def data_check_command(
    file: Path = typer.Argument(..., help="JSONL dataset."),
    recipe: Path | None = typer.Option(None, "--recipe", help="Use this recipe's tokenizer and max_length."),
) -> None:
    """Validate a dataset and show token-length statistics."""
    from finetune.data import MAX_REPORTED, dropped_text, read_dataset
    from finetune.data_stats import token_stats
    from finetune.recipe import load_recipe

    # Read as training reads it: in the recipe's dataset.format where it names one.
    report = read_dataset(file, load_recipe(recipe).dataset.format if recipe is not None else "auto")
    if report.problems:
        for line in report.problems[:MAX_REPORTED]:
            say(line)
        if len(report.problems) > MAX_REPORTED:
            say(f"... and {len(report.problems) - MAX_REPORTED} more")
        raise typer.Exit(2)
    stats = token_stats(report, recipe)
    # Multi-turn: more than one reply to learn (two user turns before one reply are one turn of the assistant).
    multi = sum(1 for c in report.conversations if sum(m["role"] == "assistant" for m in c.messages) > 1)
    rows = len(report.conversations)
    console.print(
        f"{file}: valid, format {report.format}, {rows} row{'' if rows == 1 else 's'} ({multi} multi-turn)",
        highlight=False,
    )
    console.print(
        f"tokens per row (tokenizer of {stats['model']}): p50 {stats['p50']}  p95 {stats['p95']}  "
        f"max {stats['max']}  total {stats['total']}; {stats['truncated']} rows longer than max_length "
        f"{stats['max_length']}",
        highlight=False,
    )
    if stats["dropped_lines"]:
        console.print(dropped_text(stats["dropped_lines"], len(report.conversations), stats["max_length"],
                                   "rows would be dropped in training"), highlight=False)
    if recipe is not None and stats.get("first_row"):
        console.print("first row as trained (loss on the text between ⟦ ⟧):", highlight=False)
        console.print(stats["first_row"], highlight=False, markup=False)


@app.command("runs")
def runs_command(
    folders: list[Path] = typer.Argument(None, help="Run folders, or folders of runs (default outputs/)."),
) -> None:
    """List the runs in outputs/ (or in the given folders)."""
    from rich.table import Table

    from finetune.cost import format_money
    from finetune.runs import list_runs
    from finetune.telemetry import format_duration

    rows = list_runs(*(folders or []))
    if not rows:
        from finetune.paths import outputs_dir

        console.print(f"no runs in {', '.join(str(f) for f in folders or [outputs_dir()])}", highlight=False)
        return
    # "run" is the folder, what `finetune show/export/chat RUN` take; the recipe's name, which it is unless
    # --output-dir chose another, gets a column where one differs.
    run_folders = [Path(row["_dir"]).name for row in rows]
    recipes = any(row["name"] != folder for row, folder in zip(rows, run_folders, strict=True))
    table = Table("run", *(["recipe"] if recipes else []), "status", "steps", "final loss", "wall", "peak MB",
                  "energy Wh", "cost", "date")
    for row, folder in zip(rows, run_folders, strict=True):
        cost = row.get("cost")
        loss = row.get("train_loss")
        table.add_row(
            folder, *([row["name"]] if recipes else []), row.get("status", "?"), str(row.get("steps", "")),
            f"{loss:.4f}" if isinstance(loss, (int, float)) else "",
            format_duration(row.get("wall_time_s")) if row.get("wall_time_s") is not None else "",
            f"{row['peak_memory_mb']:.0f}" if row.get("peak_memory_mb") else "",
            f"{row['energy_wh']:.1f}" if row.get("energy_wh") is not None else "-",
            format_money(cost["amount"], cost["currency"]) if cost else "",
            (row.get("finished_at") or "")[:16].replace("T", " "),
        )
    console.print(table)


@app.command("show")
def show_command(run: str = typer.Argument(..., help="Run name (in outputs/) or folder.")) -> None:
    """Print one run's summary and where its files are."""
    import json

    from finetune.runs import MERGE_FILE, read_summary, resolve_run

    run_dir = resolve_run(run)
    summary = read_summary(run_dir)
    if summary is None and (run_dir / MERGE_FILE).is_file():
        console.print(f"{run_dir}: merged by merge-adapters ({MERGE_FILE}):", highlight=False)
        console.print_json((run_dir / MERGE_FILE).read_text(encoding="utf-8"))
    elif summary is None:
        from finetune.runs import CHECKPOINTS, latest_checkpoint

        # A SIGKILL leaves no summary but the checkpoints it saved: say what --resume would continue from.
        last = latest_checkpoint(run_dir / CHECKPOINTS)
        after = (f"killed after saving {last.name}, which `finetune train RECIPE --resume` continues"
                 if last else "killed before its first checkpoint")
        console.print(f"{run_dir}: no summary.json (running, or {after})", highlight=False)
    else:
        console.print_json(json.dumps(summary, ensure_ascii=False))
    for item in sorted(run_dir.iterdir()):
        console.print(f"  {item}{'/' if item.is_dir() else ''}", highlight=False)


def _quiet_libraries() -> None:
    """Library deprecation chatter is for library authors; users see our own lines."""
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # bitsandbytes warns at import that an optional CPU kernel package is absent; its fallback works.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def main(typer_app: typer.Typer | None = None, prog_name: str | None = None) -> None:
    """Entry point and the one error funnel: a user error is one line and exit 2; `--debug` shows the traceback.

    `python -m finetune.arena` runs its own app through here too (typer_app, prog_name).
    """
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    else:
        _quiet_libraries()
    try:
        # typer's standalone mode prints its own usage errors (exit 2) and turns Ctrl-C into exit 130.
        (typer_app or app)(prog_name=prog_name)
    except FinetuneError as exc:
        if debug:
            traceback.print_exc()
        err_console.out(f"error: {exc}", highlight=False)
        sys.exit(2)
