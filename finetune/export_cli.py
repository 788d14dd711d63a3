"""CLI commands for exporting, merging adapters, chatting and generating (parse, call, print; no logic)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def _say(text: str) -> None:
    """Progress lines go to stderr so stdout stays clean for tools."""
    print(text, file=sys.stderr, flush=True)


def export(
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
        None, "--out", help="Export folder (default outputs/<run>/export[-merged])."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty export folder."),
) -> None:
    """Export a run's adapter (or the merged model) and verify it against base + adapter."""
    from finetune.export import export_run

    report = export_run(run, merge=merge, dtype=dtype, fmt=fmt, ollama=ollama, out=out, force=force, say=_say)
    print(
        f"exported {report['export']} to {report['out_dir']}: largest logit difference "
        f"{report['max_abs_logit_diff']:.3g} (tolerance {report['tolerance']:g}, {report['dtype']}) - passed"
    )


def merge_adapters(
    runs: list[str] = typer.Argument(..., help="Two or more run names or folders."),
    weights: list[str] = typer.Option(
        ..., "--weights", help="One weight per run: --weights 0.7 0.3 (or 0.7,0.3)."
    ),
    method: str = typer.Option("linear", "--method", help="linear, cat, ties or dare_ties."),
    density: float | None = typer.Option(None, "--density", help="Fraction kept by ties/dare_ties (0.5)."),
    out: Path = typer.Option(..., "--out", help="Folder for the merged adapter."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty folder."),
) -> None:
    """Merge adapters trained on the same base model into one PEFT adapter."""
    from finetune.merge_adapters import merge_adapters as run_merge
    from finetune.merge_adapters import split_weights

    # click gives an option one value: the rest of "--weights 0.7 0.3" arrives among the positionals.
    names, values = split_weights(runs, weights)
    report = run_merge(names, values, method, out, density=density, force=force, say=_say)
    print(f"merged adapter written to {report['out_dir']} (rank {report['rank']})")


def chat(
    target: str = typer.Argument(..., help="Run, exported folder, .gguf file or base model."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    no_adapter: bool = typer.Option(
        False, "--no-adapter", help="Talk to the base model without the adapter."
    ),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest reply in tokens."),
) -> None:
    """Chat in the terminal with streamed replies (/system TEXT, /reset, /quit)."""
    from finetune.chat import chat_loop, load_target

    model, tokenizer, label = load_target(target, adapter=not no_adapter)
    chat_loop(model, tokenizer, system=system, max_new_tokens=max_new_tokens, label=label)


def generate(
    target: str = typer.Argument(..., help="Run, exported folder, .gguf file or base model."),
    prompt: list[str] = typer.Option([], "--prompt", help="A prompt (repeatable)."),
    prompts: Path | None = typer.Option(
        None, "--prompts", help='JSONL of {"prompt": ...} or {"messages": [...]}.'
    ),
    system: str | None = typer.Option(None, "--system", help="System prompt for rows without one."),
    no_adapter: bool = typer.Option(False, "--no-adapter", help="Use the base model without the adapter."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest reply in tokens."),
) -> None:
    """Generate replies and print one JSON line per prompt."""
    from finetune.chat import generate_records, load_target, read_prompts
    from finetune.errors import DataError

    conversations = [[{"role": "user", "content": p}] for p in prompt]
    if prompts is not None:
        conversations += read_prompts(prompts)
    if not conversations:
        raise DataError("generate: give --prompt TEXT or --prompts FILE.jsonl")
    model, tokenizer, _ = load_target(target, adapter=not no_adapter)
    for record in generate_records(
        model, tokenizer, conversations, system=system, max_new_tokens=max_new_tokens
    ):
        print(json.dumps(record, ensure_ascii=False), flush=True)
