"""The arena's JSON API against a real uvicorn server in a subprocess, plus its CLI, storage and reports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer
from starlette.testclient import TestClient
from typer.testing import CliRunner

import finetune
from finetune.arena.cli import app as arena_app
from finetune.arena.fixture import ARMS, write_compare_dir
from finetune.arena.ratings import build_results
from finetune.arena.report import SECTION, update_reports
from finetune.arena.samples import load_compare, load_compares
from finetune.arena.server import Arena, create_app, is_loopback
from finetune.arena.store import Store
from finetune.errors import DataError, RunError

REPO = Path(finetune.__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m finetune.arena ...` in a subprocess, its output in a log file."""

    def __init__(self, tmp: Path, args: list[str], token: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finetune.arena", *args, "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env=env,
            )
        self.client = httpx.Client(base_url=self.url, timeout=10)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                self.client.get("/api/config")  # any answer (even 401) means it is listening
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"server did not start:\n{self.output()}") from None
                time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.client.close()
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)


@pytest.fixture
def servers(tmp_path: Path):
    started: list[Server] = []

    def start(args: list[str]) -> Server:
        server = Server(tmp_path, args)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)


def db_rows(db: Path, table: str) -> list[tuple]:
    """Read a table straight from SQLite (not through the arena) to see what the server stored."""
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()


def assert_blind(pair: dict) -> None:
    """The pair JSON must not name or score the arms."""
    assert not any("arm" in key or "score" in key or "style" in key for key in pair)

    def strings(value: object) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    assert not set(strings(pair)) & set(ARMS)


def vote(client: httpx.Client, pair_id: str, rater: str, choice: str, **extra) -> httpx.Response:
    return client.post("/api/vote", json={"pair_id": pair_id, "rater": rater, "choice": choice, **extra})


def test_votes_survive_restart_and_kill(tmp_path: Path, servers) -> None:
    compare = write_compare_dir(tmp_path / "cmp")
    db = tmp_path / "arena.sqlite"
    args = [str(compare), "--db", str(db), "--criterion", "style", "--criterion", "quality"]
    server = servers(args)
    raters = ["ann", "bob", "千尋"]
    choices = ["a", "b", "tie", "bad", "a"]
    for k in range(30):
        criterion = "style" if k < 24 else "quality"
        pair = server.client.get("/api/pair", params={"rater": raters[k % 3], "criterion": criterion}).json()
        assert_blind(pair)
        assert pair["question"] == {"style": "Which sounds more like the persona?",
                                    "quality": "Which answer is better overall?"}[criterion]
        revealed = vote(server.client, pair["pair_id"], raters[k % 3], choices[k % 5])
        assert revealed.status_code == 200, revealed.text
        body = revealed.json()
        assert {body["a"]["arm"], body["b"]["arm"]} <= set(ARMS) and body["a"]["arm"] != body["b"]["arm"]
    before = server.client.get("/api/results").json()
    assert before["total_votes"] == 30
    assert {(b["criterion"], b["votes"]) for b in before["boards"]} == {("style", 24), ("quality", 6)}
    open_pair = server.client.get("/api/pair", params={"rater": "bob"}).json()  # issued, not voted

    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after shutdown
    assert "updated" in server.output()
    report = json.loads((compare / "report.json").read_text())
    assert report["run"] == "pirate-smollm2"  # compare's own keys are kept
    assert set(report["arena"]["criteria"]) == {"style", "quality"}
    assert report["arena"]["criteria"]["style"]["votes"] == 24
    assert (compare / "report.md").read_text().count(SECTION) == 1

    server = servers(args)
    assert server.client.get("/api/results").json() == before  # same votes, same seeded bootstrap
    assert vote(server.client, open_pair["pair_id"], "bob", "a").status_code == 200  # issued before restart
    second_open = server.client.get("/api/pair", params={"rater": "ann"}).json()
    assert vote(server.client, server.client.get("/api/pair", params={"rater": "chi"}).json()["pair_id"],
                "chi", "b").status_code == 200
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    assert len(db_rows(db, "votes")) == 32  # the vote just before the kill is on disk

    server = servers(args)
    assert server.client.get("/api/results").json()["total_votes"] == 32
    assert server.client.get("/api/pair", params={"rater": "ann"}).json()["pair_id"] == second_open["pair_id"]
    assert vote(server.client, second_open["pair_id"], "ann", "tie").status_code == 200
    assert server.client.get("/api/results").json()["total_votes"] == 33
    row = db_rows(db, "votes")[-1]
    assert row[2] == "ann" and row[10] == "tie" and row[13] and row[14]  # rater, choice, shown/voted times


def test_bad_requests_are_refused_and_change_nothing(tmp_path: Path, servers) -> None:
    db = tmp_path / "arena.sqlite"
    server = servers([str(write_compare_dir(tmp_path / "cmp")), "--db", str(db)])
    client = server.client
    pair = client.get("/api/pair", params={"rater": "ann"}).json()
    pid = pair["pair_id"]
    snapshot = (db_rows(db, "issued"), db_rows(db, "votes"))

    refused = [
        (vote(client, "no-such-pair", "ann", "a"), 404),
        (vote(client, pid, "bob", "a"), 403),  # issued to ann
        (vote(client, pid, "ann", "left"), 422),
        (vote(client, pid, "ann", None), 422),
        (client.post("/api/vote", json={"pair_id": pid, "choice": "a"}), 422),  # no rater
        (vote(client, pid, "  ", "a"), 422),
        (client.post("/api/vote", json={"rater": "ann", "choice": "a"}), 422),  # no pair_id
        (client.post("/api/vote", content=b"{not json", headers={"Content-Type": "application/json"}), 400),
        (client.post("/api/vote", json=[pid, "ann", "a"]), 400),
        (client.post("/api/vote", data={"pair_id": pid, "rater": "ann", "choice": "a"}), 415),
        (client.get("/api/pair"), 422),  # no rater
        (client.get("/api/pair", params={"rater": "ann", "criterion": "quality"}), 422),  # not served
        (client.get("/api/pair", params={"rater": "x" * 65}), 422),
        (client.get("/api/pair", params={"rater": "ann"}, headers={"Host": "evil.example"}), 400),
        (client.get("/static/..%2F..%2Fcli.py"), 404),
        (client.get("/static/../server.py"), 404),
        (client.get("/samples.jsonl"), 404),
        (client.get("/api/results", params={"anchor": "nosuch"}), 422),  # answered 200, "nosuch = 1000"
    ]
    for response, status in refused:
        assert response.status_code == status, (response.request.url, response.text)
        assert "error" in response.json()
    assert (db_rows(db, "issued"), db_rows(db, "votes")) == snapshot

    assert vote(client, pid, "ann", "b").status_code == 200
    votes_after = db_rows(db, "votes")
    repeated = vote(client, pid, "ann", "a")
    assert repeated.status_code == 409 and "error" in repeated.json()
    assert db_rows(db, "votes") == votes_after and len(votes_after) == 1
    assert votes_after[0][10] == "b"


def test_non_loopback_bind_needs_a_token(tmp_path: Path, servers) -> None:
    server = servers([str(write_compare_dir(tmp_path / "cmp")), "--db", str(tmp_path / "a.sqlite"),
                      "--host", "0.0.0.0"])
    match = re.search(r"\?token=([A-Za-z0-9_-]+)", server.output())
    assert match, server.output()
    token = match.group(1)
    client = server.client
    for path in ("/", "/leaderboard", "/static/arena.js", "/api/config", "/api/results",
                 "/api/pair?rater=ann"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert "token" in response.json()["error"]
    assert client.get("/api/config", params={"token": "wrong"}).status_code == 401
    assert client.get("/api/config", params={"token": token}).status_code == 200
    assert client.get("/api/config", headers={"X-Arena-Token": token}).status_code == 200
    page = client.get("/", params={"token": token})
    assert page.status_code == 200 and f"/static/arena.js?token={token}" in page.text
    pair = client.get("/api/pair", params={"rater": "ann", "token": token}).json()
    assert vote(client, pair["pair_id"], "ann", "a").status_code == 401
    ok = client.post("/api/vote", json={"pair_id": pair["pair_id"], "rater": "ann", "choice": "a"},
                     headers={"X-Arena-Token": token})
    assert ok.status_code == 200
    # Bound to all interfaces, any Host name is fine as long as the token is right.
    lan = client.get("/api/config", params={"token": token}, headers={"Host": "arena.lan"})
    assert lan.status_code == 200


def test_a_user_supplied_token_is_used_as_given_and_checked(tmp_path: Path, servers) -> None:
    compare = write_compare_dir(tmp_path / "cmp")
    token = "night&owl=1/2+3%"
    server = servers([str(compare), "--db", str(tmp_path / "a.sqlite"), "--host", "0.0.0.0", "--token", token])
    printed = re.search(r"http://127\.0\.0\.1:\d+/(\?token=[^;\s]+)", server.output())
    assert printed, server.output()
    assert printed.group(1) == "?token=night%26owl%3D1%2F2%2B3%25", "the printed link must carry it encoded"
    assert server.client.get("/api/config" + printed.group(1)).status_code == 200  # the link as printed works
    assert server.client.get("/api/config", params={"token": "night"}).status_code == 401
    assert server.client.get("/api/config", headers={"X-Arena-Token": token}).status_code == 200
    runner = CliRunner()
    for weak in ("short", "has space inside", "ünïcødé-token"):
        refused = runner.invoke(arena_app, [str(compare), "--db", str(tmp_path / "b.sqlite"), "--token", weak])
        # A RunError: finetune's funnel prints it as one line, exit 2 (test_cli_errors runs it through main).
        assert isinstance(refused.exception, RunError) and "--token" in str(refused.exception), refused.output
    assert not (tmp_path / "b.sqlite").exists(), "a refused start creates nothing"


def test_token_on_loopback_is_enforced_too(tmp_path: Path) -> None:
    compares = load_compares([write_compare_dir(tmp_path / "cmp")])
    arena = Arena(compares=compares, store=Store(tmp_path / "a.sqlite"), criteria=["style"], token="s3cret")
    client = TestClient(create_app(arena), base_url="http://127.0.0.1")
    assert client.get("/api/config").status_code == 401
    assert client.get("/api/config?token=s3cret").status_code == 200
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")


def test_several_compare_folders_share_one_database(tmp_path: Path) -> None:
    one = write_compare_dir(tmp_path / "one", run="pirate")
    two = write_compare_dir(tmp_path / "two", run="robot", arms=("base", "adapter:robot"), seed=1)
    db = tmp_path / "a.sqlite"
    compares = load_compares([one, two])
    arena = Arena(compares=compares, store=Store(db), criteria=["style"], seed=0)
    client = TestClient(create_app(arena), base_url="http://127.0.0.1")
    for k in range(20):
        pair = client.get("/api/pair", params={"rater": f"r{k % 2}"}).json()
        body = client.post("/api/vote", json={"pair_id": pair["pair_id"], "rater": f"r{k % 2}",
                                              "choice": "a"}).json()
        source_arms = set(ARMS) if body["run"] == "pirate" else {"base", "adapter:robot"}
        assert {body["a"]["arm"], body["b"]["arm"]} <= source_arms  # pairs never cross folders
    boards = client.get("/api/results").json()["boards"]
    assert {(b["name"], b["run"]) for b in boards} == {("one", "pirate"), ("two", "robot")}
    assert sum(b["votes"] for b in boards) == 20
    # A later server on only one folder sees only its votes; the others stay in the database.
    solo = Arena(compares=load_compares([two]), store=Store(db), criteria=["style"])
    results = TestClient(create_app(solo), base_url="http://127.0.0.1").get("/api/results").json()
    assert [b["name"] for b in results["boards"]] == ["two"]


def test_cli_results_and_dispatch_through_a_mount(tmp_path: Path) -> None:
    compare = write_compare_dir(tmp_path / "cmp")
    db = tmp_path / "a.sqlite"
    arena = Arena(compares=load_compares([compare]), store=Store(db), criteria=["style"], seed=0)
    for _ in range(12):
        row, _samples = arena.issue("ann", "style")
        arena.store.record_vote(row["pair_id"], "ann", "a" if row["arm_left"].startswith("adapter") else "b")
    arena.store.close()

    main = typer.Typer()  # the way the lead mounts it: main_app.add_typer(arena_app, name="arena")

    @main.command()
    def version() -> None:
        typer.echo(finetune.__version__)

    main.add_typer(arena_app, name="arena")
    runner = CliRunner()
    table = runner.invoke(main, ["arena", "results", str(db), "--rounds", "50"])
    assert table.exit_code == 0, table.output
    assert "Which sounds more like the persona?" in table.output and "adapter+prompt" in table.output
    assert "Agreement with the automatic style score" in table.output
    as_json = runner.invoke(main, ["arena", "results", str(db), "--json", "--anchor", "base"])
    assert as_json.exit_code == 0, as_json.output
    board = json.loads(as_json.output)["boards"][0]
    assert board["votes"] == 12 and {r["arm"]: r["rating"] for r in board["arms"]}["base"] == 1000.0
    direct = runner.invoke(arena_app, ["results", str(db), "--json", "--update-reports"])
    assert direct.exit_code == 0
    assert json.loads((compare / "report.json").read_text())["arena"]["criteria"]["style"]["votes"] == 12

    missing = runner.invoke(main, ["arena", "results", str(tmp_path / "nope.sqlite")])
    assert isinstance(missing.exception, RunError)
    anchored = runner.invoke(main, ["arena", "results", str(db), "--anchor", "zzz"])
    assert isinstance(anchored.exception, RunError) and "--anchor zzz" in str(anchored.exception)
    # `finetune arena DIR ...` reaches the serve command: shown by its own error on a busy port.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        served = runner.invoke(main, ["arena", str(compare), "--db", str(db), "--port", str(port)])
    assert isinstance(served.exception, RunError) and "cannot listen" in str(served.exception)
    bad = runner.invoke(main, ["arena", str(compare), "--criterion", "tone"])
    assert isinstance(bad.exception, RunError) and "--criterion tone" in str(bad.exception)
    assert runner.invoke(main, ["arena", "--help"]).exit_code == 0


def test_compare_folder_errors_name_file_and_line(tmp_path: Path) -> None:
    compare = write_compare_dir(tmp_path / "cmp")
    lines = (compare / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(load_compare(compare).items()) == 42

    def broken(line2: str) -> str:
        text = "\n".join([lines[0], line2, *lines[2:]]) + "\n"
        (compare / "samples.jsonl").write_text(text, encoding="utf-8")
        with pytest.raises(DataError) as info:
            load_compare(compare)
        assert "samples.jsonl:2" in str(info.value)
        return str(info.value)

    row = json.loads(lines[1])
    assert "not valid JSON" in broken("{oops")
    assert "'text'" in broken(json.dumps({k: v for k, v in row.items() if k != "text"}))
    assert "kind" in broken(json.dumps({**row, "kind": "chat"}))
    assert "'turn'" in broken(json.dumps({**row, "turn": "0"}))
    assert "second reply" in broken(lines[0])
    (compare / "samples.jsonl").write_text(lines[0] + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="two arms"):
        load_compare(compare)
    with pytest.raises(DataError, match="not a folder"):
        load_compare(tmp_path / "missing")


def test_report_section_is_replaced_not_duplicated(tmp_path: Path) -> None:
    compare = write_compare_dir(tmp_path / "cmp")
    (compare / "report.md").write_text("# Compare\n\n## Blind arena\n\nold text\n\n## Notes\n\nkeep me\n")
    rows = [
        {"source": str(compare.resolve()), "run": "r", "criterion": "style", "rater": "ann",
         "arm_left": "adapter", "arm_right": "base", "choice": "a", "style_left": 0.9, "style_right": 0.1}
    ] * 5
    results = build_results(rows, rounds=20)
    for _ in range(2):
        written = update_reports(results, "db.sqlite")
    assert written == [compare.resolve() / "report.json", compare.resolve() / "report.md"]
    md = (compare / "report.md").read_text()
    assert md.count(SECTION) == 1 and "old text" not in md and md.rstrip().endswith("keep me")
    assert "| adapter |" in md and "100% of 5 decisive votes" in md
    assert not list(compare.glob(".report*"))  # no temp files left behind
