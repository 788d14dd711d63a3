"""`finetune export` and `finetune merge-adapters`: parse, call, print (progress on stderr, the result on stdout)."""

from __future__ import annotations

from pathlib import Path

import typer

from finetune.console import echo, say


def export_command(
    run: str = typer.Argument(..., help="Run name (in outputs/) or run folder."),
    merge: bool = typer.Option(False, "--merge", help="Merge the adapter into the base weights."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="fp16, bf16 or fp32 (default: fp32 for adapters, fp16 for merged models)."
    ),
    fmt: str = typer.Option("safetensors", "--format", help="safetensors or gguf (llama.cpp)."),
    ollama: bool = typer.Option(
        False, "--ollama", help="Also write an Ollama Modelfile (implies --format gguf)."
    ),
    out: Path | None = typer.Option(
        None, "--out",
        help="Export folder (default outputs/<run>/export, export-merged, export-gguf or export-merged-gguf).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an earlier export (never a run or any other folder)."
    ),
) -> None:
    """Export a run's adapter (or the merged model) and verify it against base + adapter."""
    from finetune.export import export_run

    report = export_run(run, merge=merge, dtype=dtype, fmt=fmt, ollama=ollama, out=out, force=force, say=say)
    if report["max_abs_logit_diff"] is None:  # GGUF without llama.cpp installed: written, not checked
        echo(f"exported {report['export']} to {report['out_dir']}: {report.get('llama_cpp', 'not checked')}")
        return
    echo(
        f"exported {report['export']} to {report['out_dir']}: largest logit difference "
        f"{report['max_abs_logit_diff']:.3g} (tolerance {report['tolerance']:g}, {report['dtype']}) - passed"
    )


def merge_adapters_command(
    runs: list[str] = typer.Argument(..., help="Two or more run names or folders."),
    weights: list[str] = typer.Option(
        ..., "--weights", help="One weight per run: --weights 0.7 0.3 (or 0.7,0.3)."
    ),
    method: str = typer.Option("linear", "--method", help="linear, cat, ties or dare_ties."),
    density: float | None = typer.Option(None, "--density", help="Fraction kept by ties/dare_ties (0.5)."),
    out: Path = typer.Option(..., "--out", help="Folder for the merged adapter."),
    force: bool = typer.Option(
        False, "--force", help="Replace an earlier merge or export (never a run or any other folder)."
    ),
) -> None:
    """Merge adapters trained on the same base model into one PEFT adapter."""
    from finetune.merge_adapters import merge_adapters, split_weights

    # click gives an option one value: the rest of "--weights 0.7 0.3" arrives among the positionals.
    names, values = split_weights(runs, weights)
    report = merge_adapters(names, values, method, out, density=density, force=force, say=say)
    echo(f"merged adapter written to {report['out_dir']} (rank {report['rank']})")
