"""The arena page in a real browser (Debian's chromium via playwright): blind, votable, escaped, readable."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from finetune.arena.fixture import ARMS, write_compare_dir
from finetune.arena.samples import load_compares
from finetune.arena.server import Arena, create_app
from finetune.arena.store import Store

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")



def missing_browser() -> str | None:
    """What this machine lacks to drive the page in a browser, or None."""
    if not CHROMIUM.exists():
        return "needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "needs the python playwright package"
    return None


def in_ci() -> bool:
    """CI sets CI=true: there a missing browser is a broken image, not a reason to skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _browser_present() -> None:
    reason = missing_browser()
    if reason and in_ci():
        pytest.fail(f"CI=true and the arena page was not tested: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture
def arena_url(tmp_path: Path):
    """A real uvicorn server in a thread over a fixture compare folder."""
    import uvicorn

    compares = load_compares([write_compare_dir(tmp_path / "cmp")])
    store = Store(tmp_path / "arena.sqlite")
    arena = Arena(compares=compares, store=store, criteria=["style", "quality"], seed=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(arena), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", tmp_path / "arena.sqlite"
    server.should_exit = True
    thread.join(timeout=10)


def arm_names_shown(text: str) -> list[str]:
    """Return the arm names that appear as words in the page text (case-sensitive, as the API spells them)."""
    return [arm for arm in ARMS if re.search(rf"(?<![\w+]){re.escape(arm)}(?![\w+])", text)]


def test_vote_through_the_page(arena_url, tmp_path: Path) -> None:
    url, db = arena_url
    dialogs: list[str] = []
    errors: list[str] = []
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto(url + "/")
            page.fill("#name-input", "Tester 太郎")
            page.click("#name-form button")
            page.wait_for_selector("#arena:not([hidden])")
            assert "rater=" in page.url
            assert page.inner_text("#question") == "Which sounds more like the persona?"

            votes = 0
            saw_japanese = saw_html = False
            while votes < 10 or not (saw_japanese and saw_html):
                assert votes < 42, "the fixture's Japanese and HTML prompts never came up"
                page.wait_for_selector("#after[hidden]", state="attached")
                body = page.inner_text("body")
                assert arm_names_shown(body) == [], body
                assert page.inner_text("#arm-a") == page.inner_text("#arm-b") == ""
                prompt = page.inner_text("#prompt")
                if "<script>alert(1)</script>" in prompt:
                    saw_html = True  # shown as text, not run
                    assert "<img src=x onerror=alert(2)>" in page.inner_text(".answers")
                if JAPANESE.search(prompt) and not saw_japanese:
                    saw_japanese = True
                    page.screenshot(path=str(tmp_path / "arena-japanese.png"), full_page=True)

                # Mouse and keyboard take turns, and each goes through all four choices.
                choice = ["a", "b", "tie", "bad"][(votes // 2) % 4]
                if votes % 2 == 0:
                    label = {"a": "A is better", "b": "B is better", "tie": "Tie", "bad": "Both bad"}[choice]
                    page.get_by_role("button", name=re.compile("^" + label)).click()
                else:
                    keys = {"a": ("1", "a"), "b": ("2", "b"), "tie": ("3", "t"), "bad": ("4", "x")}[choice]
                    page.keyboard.press(keys[(votes // 2) % 2])  # "1", "b", "3", "x", ...
                page.wait_for_selector("#after:not([hidden])")
                votes += 1
                arms = [page.inner_text("#arm-a"), page.inner_text("#arm-b")]
                assert set(arms) <= set(ARMS) and arms[0] != arms[1], arms
                assert page.inner_text("#progress") == f"Voted {votes} of 42"
                if choice in ("a", "b"):
                    assert "chosen" in page.get_attribute(f"#side-{choice}", "class")
                if votes == 1:
                    page.screenshot(path=str(tmp_path / "arena-revealed.png"), full_page=True)
                if votes % 3 == 0:
                    page.keyboard.press("Enter")
                else:
                    page.click("#next")

            page.wait_for_selector("#after[hidden]", state="attached")
            with sqlite3.connect(db) as conn:
                stored = conn.execute("SELECT rater, COUNT(*) FROM votes GROUP BY rater").fetchall()
            assert stored == [("Tester 太郎", votes)]

            page.click("#board-link")
            page.wait_for_selector("#boards table")
            board = page.inner_text("#boards")
            assert "Which sounds more like the persona?" in board
            assert all(arm in board for arm in ARMS)
            assert f"{votes} votes" in page.inner_text("#summary")
            page.screenshot(path=str(tmp_path / "arena-leaderboard.png"), full_page=True)

            # A link can name the rater and the question: no name form then.
            page.goto(url + "/?rater=%E8%8A%B1%E5%AD%90&criterion=quality")
            page.wait_for_selector("#arena:not([hidden])")
            assert page.inner_text("#question") == "Which answer is better overall?"
            assert page.inner_text("#who") == "Rating as 花子"
            assert page.inner_text("#progress") == "Voted 0 of 42"
        finally:
            browser.close()
    assert dialogs == [], "model text was executed as HTML"
    assert errors == []
    for name in ("arena-japanese.png", "arena-revealed.png", "arena-leaderboard.png"):
        assert (tmp_path / name).stat().st_size > 10_000
