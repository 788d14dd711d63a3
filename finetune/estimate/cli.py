"""`finetune estimate`: parse options, call the planner, print tables (or JSON). No arithmetic lives here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from finetune.console import console, echo
from finetune.cost import format_money
from finetune.errors import FinetuneError

if TYPE_CHECKING:
    from finetune.recipe import Recipe

def estimate_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    gpu: str | None = typer.Option(None, "--gpu", help="A catalogue GPU (e.g. 4090, 'A100 80GB'), or 'all'."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="Number of GPUs (multi-GPU memory and time)."),
    strategy: str | None = typer.Option(
        None, "--strategy", help="ddp, fsdp, zero2 or zero3 (default: the recipe's distributed.strategy)."
    ),
    probe: bool = typer.Option(False, "--probe", help="Run a few real steps here and calibrate the speed."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON (schema: docs/estimate.md)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: KEY=VALUE (repeatable)."),
    catalog: Path | None = typer.Option(None, "--catalog", help="Your own GPU/model catalogue YAML file."),
) -> None:
    """Will the recipe fit, how long will it take, what will it cost (no weights are loaded)."""
    from finetune.estimate.plan import check_options, estimate
    from finetune.recipe import check_dataset_path, load_recipe

    loaded = load_recipe(recipe, set_)
    check_dataset_path(loaded, recipe, set_)  # as train says it: which recipe key, which directory
    check_options(loaded, strategy, gpus, gpu)  # bad options fail before the probe's minutes, not after
    # The probe runs inside the planner, after the checks that need the rows and devices (e.g. --gpus).
    measure = (lambda: _probe(loaded)) if probe else None
    result = estimate(loaded, gpu=gpu, num_gpus=gpus, strategy=strategy, probe=measure, catalog_file=catalog,
                      recipe_dir=recipe.parent)
    if json_out:
        echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
        return
    render(result)


def _probe(recipe: Recipe, steps: int = 4) -> dict[str, Any]:
    """A few real training steps on this machine through the training path, measured (for --probe)."""
    try:
        from finetune.train import run_probe
    except ImportError as exc:
        raise FinetuneError(f"--probe needs finetune.train.run_probe, not importable: {exc}") from None
    return run_probe(recipe, steps=steps)


def render(result: object) -> None:
    """Print an Estimate as a few rich tables."""
    from finetune.estimate.plan import Estimate, budget_text, counted, hours_text

    assert isinstance(result, Estimate)
    shape, setup, tokens = result.model, result.setup, result.tokens
    plain = "16-bit" if setup.precision != "fp32" else "fp32"
    quant = {4: "4-bit (QLoRA)", 8: "8-bit", None: plain}[setup.bits]
    console.print(
        f"[bold]{result.recipe_name}[/bold]: {shape.name} ({shape.params / 1e9:.2f}B params, "
        f"{shape.architecture}, {shape.source}), LoRA r={setup.lora_r} -> "
        f"{result.trainable_params / 1e6:.1f}M trainable; base {quant}",
        highlight=False,
    )
    truncated = f"; {counted(tokens.truncated_rows, 'row')} truncated" if tokens.truncated_rows else ""
    console.print(
        f"data: {counted(tokens.rows_train, 'training row')}, {tokens.per_epoch:,} tokens/epoch "
        f"({'counted with the tokenizer' if tokens.method == 'tokenizer' else 'estimated from characters'}"
        f"{truncated})"
        + (f", {counted(result.steps, 'optimizer step')} (max_steps)" if result.max_steps
           else f" x {counted(result.epochs, 'epoch')} = {counted(result.steps, 'optimizer step')}"),
        highlight=False,
    )
    _memory_table(result)
    _gpu_table(result)
    primary = next((r for r in result.rows if r.name == result.memory_target), result.rows[0])
    if not primary.fits and primary.suggestions:
        console.print(f"[yellow]does not fit on {primary.name}[/yellow]; changes that fit:", highlight=False)
        for line in primary.suggestions:
            console.print(f"  - {line}", highlight=False)
    if result.hosted:
        hosted = ", ".join(f"{h['name']} {format_money(h['amount'], h['currency'])}" for h in result.hosted)
        total = result.total_training_tokens
        console.print(f"hosted fine-tuning of the same {total:,} tokens: {hosted} "
                      f"(prices as of {result.hosted[0]['as_of']})", highlight=False)
    if result.probe:
        p = result.probe
        m, q = p["measured"], p["predicted"]
        console.print(
            f"probe on {p['device']}: {m['seconds_per_step']:.2f} s/step measured vs "
            f"{q['seconds_per_step']:.2f} predicted; peak {m['peak_memory_mb']:.0f} MB measured vs "
            f"{q['peak_memory_mb']:.0f} MB predicted; this machine's times scaled by {p['speed_factor']:.2f} "
            f"(utilisation {p['utilisation_assumed']:.2f} -> {p['utilisation_calibrated']:.3f})",
            highlight=False,
        )
    elif result.calibration and result.calibration["source"] == "run":
        c = result.calibration
        once = f", plus {c['first_step_extra_s']:.0f} s once for compiling" if c.get("first_step_extra_s") else ""
        kind = "compiled run" if c.get("compile") else "run"
        memory_from = f" (from run {c['memory_from']}: larger than the compiled run's)" if c.get("memory_from") else ""
        console.print(f"this machine's times scaled by {c['speed_factor']:.2f} and memory by {c['memory_factor']:.2f}"
                      f"{memory_from}{once}, learned from {kind} {c['run']} ({str(c['measured_at'])[:10]}, "
                      f"recipe {c['recipe']}, max_length {c['max_length']})", highlight=False)
    elif result.calibration:
        c = result.calibration
        console.print(f"this machine's times scaled by {c['speed_factor']:.2f}, measured by `--probe` on "
                      f"{c['measured_at'][:10]} (recipe {c['recipe']})", highlight=False)
    scaled = ", scaled as above for this machine" if result.calibration and primary.this_machine else ""
    console.print(f"time assumes {_utilisation_text(result)}{scaled}: {hours_text(primary.hours)} on "
                  f"{_row_label(primary, any(r.num_gpus > 1 for r in result.rows))}; see docs/estimate.md",
                  style="dim", highlight=False)
    budget = budget_text(result.max_time_s, result.fit_to_budget, primary.hours, result.steps)
    if budget:
        console.print(f"{budget} on {_row_label(primary, any(r.num_gpus > 1 for r in result.rows))}",
                      highlight=False)


def _utilisation_text(result: object) -> str:
    """The utilisation the rows' times assume: a GPU's (assumptions.utilisation), a CPU's (cpu_utilisation)."""
    a = result.assumptions  # type: ignore[attr-defined]
    kinds = {"cpu" if r.this_machine and "CPU" in r.name else "cuda" for r in result.rows}  # type: ignore[attr-defined]
    parts = []
    if "cuda" in kinds:
        parts.append(f"{a.utilisation:.0%} of a GPU's dense peak")
    if "cpu" in kinds:
        parts.append(f"{a.cpu_utilisation:.0%} of this CPU's measured matmul peak")
    return " and ".join(parts)


def _row_label(row: object, multi: bool) -> str:
    """A row's name as the table shows it: 'this machine (CPU)', '2 x A100 80GB (fsdp)'."""
    name = row.name  # type: ignore[attr-defined]
    if row.this_machine:  # type: ignore[attr-defined]
        name = "this machine" + (" (CPU)" if "CPU" in row.name else "")  # type: ignore[attr-defined]
    if multi and row.num_gpus > 1:  # type: ignore[attr-defined]
        name = f"{row.num_gpus} x {name} ({row.strategy})"  # type: ignore[attr-defined]
    return name


def _memory_table(result: object) -> None:
    """The memory breakdown for the primary target."""
    mem, setup = result.memory, result.setup  # type: ignore[attr-defined]
    # A packed step is laid out in lines, not rows: its batch is not training.batch_size.
    batch = (f"largest packed batch {setup.batch} lines" if result.packed  # type: ignore[attr-defined]
             else f"batch {setup.batch}")
    console.print(f"peak memory per device on {result.memory_target} "  # type: ignore[attr-defined]
                  f"({batch} x {setup.seq} tokens, {setup.precision}, "
                  f"checkpointing {'on' if setup.checkpointing else 'off'}):", highlight=False)
    table = Table()
    table.add_column("component")
    table.add_column("GB", justify="right")
    rows = [
        ("base weights", mem.weights_gb),
        ("LoRA weights", mem.lora_gb),
        ("LoRA gradients + AdamW states", mem.optimizer_gb),
        (f"activations (checkpointing {'on' if setup.checkpointing else 'off'})", mem.activations_gb),
        ("logits", mem.logits_gb),
        # What overhead_gb holds on this device (docs/estimate.md); a CPU run's peak grows as it meets new batch shapes.
        (_overhead_label(setup), mem.overhead_gb),
    ]
    for name, value in rows:
        table.add_row(name, f"{value:.2f}")
    other = mem.activations_no_checkpointing_gb if setup.checkpointing else mem.activations_checkpointing_gb
    table.add_row(f"[dim](activations with checkpointing {'off' if setup.checkpointing else 'on'})[/dim]",
                  f"[dim]{other:.2f}[/dim]")
    table.add_row("[bold]total[/bold]", f"[bold]{mem.total_gb:.2f}[/bold]")
    console.print(table)


def _overhead_label(setup: object) -> str:
    """What the overhead row holds on the setup's device."""
    if setup.device == "cuda":  # type: ignore[attr-defined]
        quantised = ", dequantised weight" if setup.bits is not None else ""  # type: ignore[attr-defined]
        return f"CUDA context{quantised}, allocator margin"
    return "process baseline, allocator margin" + (", climb over a run" if setup.climb else "")  # type: ignore[attr-defined]


def _gpu_table(result: object) -> None:
    """One row per target: fits, largest batch and sequence, hours, cost."""
    from finetune.estimate.plan import hours_text

    rows = result.rows  # type: ignore[attr-defined]
    multi = any(r.num_gpus > 1 for r in rows)
    table = Table(title_justify="left", caption_justify="left")
    table.add_column("GPU", no_wrap=True)
    table.add_column("GB", justify="right")
    table.add_column("fits")
    table.add_column("peak", justify="right")
    table.add_column("max batch", justify="right")
    table.add_column("max seq", justify="right")
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    table.add_column("priced by", no_wrap=True)
    dates = set()
    for row in rows:
        name = _row_label(row, multi)
        if row.cost.get("price_as_of"):
            dates.add(row.cost["price_as_of"])
        table.add_row(
            name,
            f"{row.memory_gb:.0f}",
            "[green]yes[/green]" if row.fits else "[red]no[/red]",
            f"{row.total_gb:.1f}",
            str(row.max_batch_size),
            str(row.max_seq_len),
            hours_text(row.hours),
            format_money(row.cost.get("amount"), row.cost.get("currency", "USD")),
            _basis(row.cost),
        )
    if dates:
        table.caption = f"rental prices: catalogue, as of {', '.join(sorted(dates))}; peak and GB in GiB"
    console.print(table)


def _basis(cost: dict) -> str:
    """A short label for how a cost was priced."""
    basis = cost.get("basis", "none")
    label = {"none": "-", "electricity-estimated": "electricity", "electricity-measured": "electricity",
             "rental": "rental"}.get(basis, basis)
    return f"{label} (recipe)" if cost.get("price") == "recipe" else label
