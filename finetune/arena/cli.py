"""`finetune arena`: serve the blind rating page over compare folders, and print the leaderboard."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from finetune.arena.criteria import CRITERIA, QUESTIONS
from finetune.arena.ratings import build_results
from finetune.arena.report import update_reports
from finetune.arena.samples import load_compares
from finetune.arena.server import Arena, create_app, is_loopback, new_token, serve
from finetune.arena.store import Store
from finetune.console import console, echo, say
from finetune.errors import RunError
from finetune.paths import outputs_dir


class _ArenaGroup(TyperGroup):
    """Send `finetune arena DIR ...` to the `serve` command; `serve` and `results` can also be named."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:  # noqa: ANN001 (click's Context)
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_ArenaGroup,
    help=(
        "Blind pairwise rating of compare outputs in the browser. `finetune arena COMPARE_DIR ...` "
        "serves the page; `finetune arena results DB` prints the leaderboard."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def default_db() -> Path:
    """Return the default arena database path (`outputs/arena.sqlite`)."""
    return outputs_dir() / "arena.sqlite"


def _check_port(host: str, port: int) -> None:
    """Fail early with a one-line error if the address cannot be listened on."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host.strip("[]"), port), family=family):
            pass
    except OSError as exc:
        # create_server's own message repeats the address ("... (while attempting to bind on address ...)").
        reason = os.strerror(exc.errno) if exc.errno else exc
        raise RunError(f"cannot listen on {host}:{port} ({reason}); pick another --port") from None


@app.command("serve")
def serve_command(
    compare_dirs: Annotated[list[Path], typer.Argument(help="Output folders of `finetune compare`.")],
    db: Annotated[Path | None, typer.Option(help="Vote database (default outputs/arena.sqlite).")] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    criterion: Annotated[
        list[str] | None, typer.Option(help="Question(s) to ask: style, quality (repeat for both).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="Access token (generated when binding beyond loopback).")
    ] = None,
) -> None:
    """Serve the blind pairwise rating page over one or more compare folders."""
    criteria = list(dict.fromkeys(criterion or ["style"]))
    for c in criteria:
        if c not in CRITERIA:
            raise RunError(f"--criterion {c}: expected one of {', '.join(CRITERIA)}")  # one line, not typer's box
    if token is not None and (len(token) < 8 or not token.isascii() or not token.isprintable() or " " in token):
        # It travels in links and an HTTP header: printable ASCII, and long enough not to be guessed.
        raise RunError("--token: expected at least 8 printable ASCII characters, no spaces")
    compares = load_compares(compare_dirs)
    loopback = is_loopback(host)
    if not loopback and not token:
        token = new_token()
    db_path = db or default_db()
    _check_port(host, port)
    store = Store(db_path)
    arena = Arena(compares=compares, store=store, criteria=criteria, token=token, check_host=loopback)

    def write_reports() -> None:
        # Runs inside the server's shutdown: uvicorn re-raises SIGTERM afterwards, ending the process.
        for path in update_reports(arena.results(None), str(db_path)):
            echo(f"updated {path}")
        sys.stdout.flush()

    web = create_app(arena, on_shutdown=write_reports)
    query = f"?token={quote(token, safe='')}" if token else ""
    shown_host = host if loopback else socket.gethostname()
    url = f"http://{shown_host}:{port}/{query}"
    pairs = len(arena.items)
    echo(f"arena: {len(compares)} compare folder(s), {pairs} pairs per rater, database {db_path}")
    echo(f"Open {url}")
    if not loopback:
        echo(f"(on this machine: http://127.0.0.1:{port}/{query}; share the link only with raters)")
    echo(f"A link that names its rater: {url}{'&' if query else '?'}rater=NAME")
    echo("Ctrl-C stops the server.")
    sys.stdout.flush()
    try:
        serve(web, host, port)
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C after its clean shutdown; the reports are already written
    finally:
        store.close()


def _leaderboard_tables(results: dict) -> list:
    """Build the rich renderables for a leaderboard (names as Text so markup in them is not parsed)."""
    out: list = []
    for board in results["boards"]:
        question = QUESTIONS.get(board["criterion"], board["criterion"])
        table = Table(
            title=Text(f"{board['name']}: {question}"),
            caption=Text(f"{board['votes']} votes, {board['raters']} rater(s), run {board['run']}"),
        )
        for column in ("Arm", "Rating", "95% CI", "Votes", "Wins", "Losses", "Ties", "Both bad"):
            table.add_column(column, justify="left" if column == "Arm" else "right", no_wrap=True)
        for row in board["arms"]:
            ci = f"{row['ci95'][0]:.0f}-{row['ci95'][1]:.0f}" if row["ci95"] else "n/a"
            table.add_row(
                Text(row["arm"]),
                f"{row['rating']:.0f}",
                ci,
                *(str(row[k]) for k in ("votes", "wins", "losses", "ties", "both_bad")),
            )
        out.append(table)
        arms = [row["arm"] for row in board["arms"]]
        matrix = Table(title=Text("Win rate, row arm vs column arm (ties = 1/2)"))
        matrix.add_column("", no_wrap=True)
        for arm in arms:
            matrix.add_column(Text(arm), justify="right")
        for x in arms:
            rates = board["win_rate"].get(x, {})
            cells = ["" if x == y else (f"{rates[y]:.0%}" if rates.get(y) is not None else "-") for y in arms]
            matrix.add_row(Text(x), *cells)
        out.append(matrix)
        pairs = Table(title=Text("Votes per arm pair"))
        for column in ("Arms", "Votes", "1st wins", "2nd wins", "Ties", "Both bad"):
            pairs.add_column(column, justify="left" if column == "Arms" else "right", no_wrap=True)
        for p in board["pairs"]:
            first, second = p["arms"]
            pairs.add_row(
                Text(f"{first} vs {second}"),
                str(p["votes"]),
                str(p["wins"][first]),
                str(p["wins"][second]),
                str(p["ties"]),
                str(p["both_bad"]),
            )
        out.append(pairs)
        agreement = board.get("style_agreement")
        if agreement and agreement["votes"]:
            lo, hi = agreement["ci95"]
            out.append(
                Text(
                    f"Agreement with the automatic style score: {agreement['rate']:.0%} of "
                    f"{agreement['votes']} decisive votes (95% CI {lo:.0%} to {hi:.0%})\n"
                )
            )
    out.append(Text("Method: " + "; ".join(f"{k}: {v}" for k, v in results["method"].items())))
    return out


def print_results(results: dict, out: Console | None = None) -> None:
    """Print a leaderboard as rich tables."""
    out = out or console
    if not results["boards"]:
        out.print("No votes yet.")
    for renderable in _leaderboard_tables(results):
        out.print(renderable)


@app.command("results")
def results_command(
    db: Annotated[Path, typer.Argument(help="Arena database (e.g. outputs/arena.sqlite).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    anchor: Annotated[
        str | None, typer.Option(help="Arm to pin at 1000 (default: mean of all arms = 1000).")
    ] = None,
    rounds: Annotated[int, typer.Option(min=0, help="Bootstrap rounds for the 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    update: Annotated[
        bool, typer.Option("--update-reports", help="Also write the results into each compare report.")
    ] = False,
) -> None:
    """Print the leaderboard (Bradley-Terry ratings, CIs, win rates, style agreement) of a vote database."""
    if not db.is_file():
        raise RunError(f"{db}: no arena database here (start one with `finetune arena COMPARE_DIR`)")
    store = Store(db, create=False)
    try:
        rows = store.votes()
    finally:
        store.close()
    if anchor is not None and not any(anchor in (r["arm_left"], r["arm_right"]) for r in rows):
        raise RunError(f"--anchor {anchor}: no votes involve that arm")
    results = build_results(rows, rounds=rounds, seed=seed, anchor=anchor)
    if as_json:
        echo(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        print_results(results)
    if update:
        for path in update_reports(results, str(db)):
            (say if as_json else echo)(f"updated {path}")
