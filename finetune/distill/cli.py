"""`finetune distill`: parse the options, distill, print what was kept and where it went."""

from __future__ import annotations

from pathlib import Path

import typer

from finetune.console import console, say


def distill(
    recipe: Path = typer.Argument(..., help="Recipe YAML: base model, system_prompt (the persona), style markers."),
    prompts: str | None = typer.Option(
        None, "--prompts", help='Prompts JSONL ({"prompt"} or {"messages"} rows), or "bundled" (default).'
    ),
    n: int | None = typer.Option(None, "--n", min=1, help="Distill at most N prompts."),
    teacher: str | None = typer.Option(
        None, "--teacher", help="A local model folder or an OpenAI-compatible URL (default: the recipe's base model)."
    ),
    teacher_model: str | None = typer.Option(None, "--teacher-model", help="Model name sent to an endpoint."),
    candidates: int | None = typer.Option(None, "--candidates", min=1, max=32, help="Sampled replies per prompt."),
    out: Path | None = typer.Option(None, "--out", help="Output chat JSONL (default: see docs/distill.md)."),
    allow_remote_teacher: bool = typer.Option(
        False, "--allow-remote-teacher", help="Allow a teacher URL that is not on this machine."
    ),
    force: bool = typer.Option(
        False, "--force", help="Start over: regenerate every prompt; overwrite a data file distill did not write."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: KEY=VALUE (repeatable)."),
    dtype: str = typer.Option("auto", "--dtype", help="Local inference dtype: auto, fp32 or bf16."),
) -> None:
    """Turn the recipe's persona prompt into training data (context distillation)."""
    from finetune.distill.run import DistillOptions, run_distill

    options = DistillOptions(
        recipe_path=recipe, prompts=prompts, n=n, teacher=teacher, teacher_model=teacher_model,
        candidates=candidates, out=out, allow_remote_teacher=allow_remote_teacher, force=force, overrides=set_,
        dtype=dtype,
    )
    record = run_distill(options, say=say)
    result = record["result"]
    effect = result["filter_effect"]
    console.print(
        f"kept {result['kept']} of {result['prompts']} prompts ({result['candidates_passed']} of "
        f"{result['candidates']} candidates passed); style of kept rows {effect['kept']['style']} vs all "
        f"candidates {effect['all_candidates']['style']}",
        highlight=False, soft_wrap=True,
    )
    files = record["files"]
    console.print(f"data: {files['data']}  scores: {files['scores']}", highlight=False, soft_wrap=True)
    if record["files"]["recipe_dataset"]:
        console.print(f"next: finetune train {recipe}", highlight=False, soft_wrap=True)
    else:
        console.print("next: point a recipe's dataset.path at the data file and train it", highlight=False)
