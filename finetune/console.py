"""The two consoles every command prints through: results on stdout, progress and problems on stderr."""

from __future__ import annotations

import sys

from rich.console import Console

# Tables are wider than 80 columns: give them room when the output is not a terminal (pipes, logs).
# Neither console binds a file: rich resolves sys.stdout / sys.stderr at print time, so test capture works.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def echo(text: str) -> None:
    """One line for tools on stdout, as is: no markup, wrapping or highlighting (JSON lines, paths)."""
    console.out(text, highlight=False)


def say(text: str) -> None:
    """One progress line on stderr, as is, so stdout stays clean for tools."""
    err_console.out(text, highlight=False)
