"""Commands that live in their own modules, mounted on the main CLI app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount every feature's commands on the `finetune` app (one line per feature)."""
    from finetune.arena.cli import app as arena_app

    app.add_typer(arena_app, name="arena")
    from finetune.compare.cli import compare

    app.command("compare")(compare)
    from finetune.export_cli import chat, export, generate, merge_adapters

    app.command("export")(export)
    app.command("merge-adapters")(merge_adapters)
    app.command("chat")(chat)
    app.command("generate")(generate)
    from finetune.estimate_cli import estimate

    app.command("estimate")(estimate)
