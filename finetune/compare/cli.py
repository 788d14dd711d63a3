"""`finetune compare`: parse the options, run the comparison, print the table and the verdicts."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from finetune.compare.decoding import DEFAULT_REPETITION_PENALTY


def compare(
    recipe: Path = typer.Argument(
        ..., help="Recipe YAML: base model, dataset (held-out rows), system prompt, markers."
    ),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="Run name or folder with an adapter (repeatable)."
    ),
    arms: str | None = typer.Option(
        None,
        "--arms",
        help="Comma-separated arms: base, prompt, adapter, adapter+prompt, adapter:<run>[+prompt].",
    ),
    system_prompt: str | None = typer.Option(
        None, "--system-prompt", help="Persona system prompt TEXT or @FILE (default: the recipe's)."
    ),
    eval_file: Path | None = typer.Option(
        None, "--eval", help="Prompts from this dataset file, not held-out rows."
    ),
    samples: int | None = typer.Option(None, "--samples", min=1, help="At most N single prompts."),
    conversations: Path | None = typer.Option(
        None, "--conversations", help='Multi-turn JSONL: {"id", "turns": list of user turns}.'
    ),
    turns: int | None = typer.Option(
        None, "--turns", min=1, help="Use at most N user turns per conversation."
    ),
    max_conversations: int | None = typer.Option(
        None, "--max-conversations", min=1, help="At most N conversations."
    ),
    long_file: Path | None = typer.Option(
        None, "--long", help='Long-answer prompts JSONL: {"id", "prompt"}.'
    ),
    max_long: int | None = typer.Option(None, "--max-long", min=1, help="At most N long prompts."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Tokens per reply."),
    long_max_new_tokens: int = typer.Option(
        192, "--long-max-new-tokens", min=1, help="Tokens per long answer."
    ),
    mc: list[Path] = typer.Option(
        [],
        "--mc",
        help="Multiple-choice JSONL (q_id, question, choice0.., label); default datasets/eval/commonsense_*.",
    ),
    no_mc: bool = typer.Option(False, "--no-mc", help="Skip multiple-choice questions."),
    mc_samples: int | None = typer.Option(100, "--mc-samples", min=1, help="At most N questions per file."),
    classifier_samples: int = typer.Option(
        96, "--classifier-samples", min=10, help="Training prompts for the style classifier."
    ),
    price: str | None = typer.Option(
        None, "--price", help="Input price entry of finetune/catalog/inference_prices.yaml, or 'local'."
    ),
    price_per_mtok: float | None = typer.Option(
        None, "--price-per-mtok", help="Input price per million tokens."
    ),
    price_currency: str = typer.Option("USD", "--price-currency", help="Currency of --price-per-mtok."),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default outputs/<run>/compare/<time>)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an earlier compare in --out."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling, the classifier split and the bootstrap."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Prompts generated together."),
    do_sample: bool = typer.Option(False, "--do-sample", help="Sample (seeded) instead of greedy decoding."),
    temperature: float = typer.Option(
        0.7, "--temperature", min=0.01, help="Sampling temperature with --do-sample."
    ),
    repetition_penalty: float = typer.Option(
        DEFAULT_REPETITION_PENALTY,
        "--repetition-penalty",
        min=1.0,
        help="Penalise tokens a reply already used, never end-of-turn, in every arm (1 = plain greedy).",
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Regenerate base-model outputs instead of reusing them."
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="Inference dtype: auto (bf16 where measured fast, else fp32), fp32 or bf16."
    ),
    max_time: str | None = typer.Option(
        None,
        "--max-time",
        help="Finish in about this long ('4m', '1h'): a short probe, then every prompt set cut by one fraction.",
    ),
) -> None:
    """A/B test adapters against a system prompt: style, drift, retained skill, cost, with 95% CIs."""
    from finetune.compare import CompareError
    from finetune.compare.report import console_table
    from finetune.compare.run import CompareOptions, run_compare
    from finetune.console import console
    from finetune.recipe import parse_duration

    try:
        seconds = parse_duration(max_time)
    except ValueError as exc:
        raise CompareError(f"--max-time {max_time}: {exc}") from None
    options = CompareOptions(
        recipe_path=recipe,
        adapters=adapter,
        arms=arms,
        system_prompt=system_prompt,
        eval_file=eval_file,
        samples=samples,
        conversations=conversations,
        turns=turns,
        max_conversations=max_conversations,
        long_file=long_file,
        max_long=max_long,
        max_new_tokens=max_new_tokens,
        long_max_new_tokens=long_max_new_tokens,
        mc_files=[] if no_mc else (mc or None),
        mc_samples=mc_samples,
        classifier_samples=classifier_samples,
        price=price,
        price_per_mtok=price_per_mtok,
        price_currency=price_currency.upper(),
        out=out,
        force=force,
        seed=seed,
        batch_size=batch_size,
        do_sample=do_sample,
        temperature=temperature,
        repetition_penalty=repetition_penalty,
        use_cache=not no_cache,
        dtype=dtype,
        max_time=seconds,
    )
    folder, report = run_compare(options, say=lambda text: console.print(text, highlight=False))
    console.print(console_table(report))
    decision = report.decision
    if decision:
        headline = escape(decision.headline)
        console.print(f"[bold]Adapter or prompt?[/bold] {headline}", highlight=False, soft_wrap=True)
        for reason in decision.reasons:
            console.print(f"  {reason.topic}: {escape(reason.text)}", highlight=False, soft_wrap=True)
    for line in report.verdicts:
        if line.startswith("WARNING"):  # a loop-ridden arm must be impossible to miss
            console.print(f"[bold red]• {escape(line)}[/bold red]", highlight=False, soft_wrap=True)
        else:
            console.print(f"• {line}", highlight=False, soft_wrap=True)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)
    console.print(f"report: {folder / 'report.html'}  samples: {folder / 'samples.jsonl'}", highlight=False)
