"""`finetune chat` and `finetune generate`: parse, call, print (JSON lines on stdout for `generate`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from finetune.console import echo, say


def chat_command(
    target: str = typer.Argument(..., help="Run, exported folder, .gguf file or base model."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    no_adapter: bool = typer.Option(
        False, "--no-adapter", help="Talk to the base model without the adapter (of a run or an adapter folder)."
    ),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest reply in tokens."),
) -> None:
    """Chat in the terminal with streamed replies (/system TEXT, /reset, /quit)."""
    from finetune.chat import chat_loop, load_target

    model, tokenizer, label = load_target(target, adapter=not no_adapter, warn=say)
    chat_loop(model, tokenizer, system=system, max_new_tokens=max_new_tokens, label=label)


def generate_command(
    target: str = typer.Argument(..., help="Run, exported folder, .gguf file or base model."),
    prompt: list[str] = typer.Option([], "--prompt", help="A prompt (repeatable)."),
    prompts: Path | None = typer.Option(
        None, "--prompts", help='JSONL of {"prompt": ...} or {"messages": [...]}.'
    ),
    system: str | None = typer.Option(None, "--system", help="System prompt for rows without one."),
    no_adapter: bool = typer.Option(
        False, "--no-adapter", help="Use the base model without the adapter (of a run or an adapter folder)."
    ),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest reply in tokens."),
) -> None:
    """Generate replies and print one JSON line per prompt."""
    from finetune.chat import generate_records, load_target, read_prompts
    from finetune.errors import DataError

    conversations = [[{"role": "user", "content": p}] for p in prompt]
    if prompts is not None:
        conversations += read_prompts(prompts)
    if not conversations:
        raise DataError("generate: give --prompt TEXT or --prompts FILE.jsonl")
    model, tokenizer, _ = load_target(target, adapter=not no_adapter, warn=say)
    for record in generate_records(
        model, tokenizer, conversations, system=system, max_new_tokens=max_new_tokens
    ):
        echo(json.dumps(record, ensure_ascii=False))
