"""The arena app's guard in-process: security headers on every answer, Host parsing, tokens, concurrent votes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from finetune.arena.fixture import write_compare_dir
from finetune.arena.samples import load_compares
from finetune.arena.server import Arena, _host_name, create_app
from finetune.arena.store import Refused, Store

HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "Cache-Control")


def make_arena(tmp_path: Path, token: str | None = None, db: str = "a.sqlite", **kwargs) -> Arena:
    folder = tmp_path / "cmp"
    if not folder.exists():
        write_compare_dir(folder)
    return Arena(compares=load_compares([folder]), store=Store(tmp_path / db), criteria=["style"],
                 token=token, seed=0, **kwargs)


def test_every_answer_carries_the_security_headers(tmp_path: Path) -> None:
    client = TestClient(create_app(make_arena(tmp_path, token="s3cret")), base_url="http://127.0.0.1")
    answers = {
        "page": client.get("/?token=s3cret"),
        "asset": client.get("/static/arena.js?token=s3cret"),
        "api": client.get("/api/config?token=s3cret"),
        "not found": client.get("/static/nope.js?token=s3cret"),
        "refused by the API": client.get("/api/pair?token=s3cret"),
        "no token": client.get("/api/config"),
        "foreign Host": client.get("/api/config?token=s3cret", headers={"Host": "evil.example"}),
    }
    expected_status = {"page": 200, "asset": 200, "api": 200, "not found": 404, "refused by the API": 422,
                       "no token": 401, "foreign Host": 400}
    for what, response in answers.items():
        assert response.status_code == expected_status[what], (what, response.text)
        for header in HEADERS:
            assert header in response.headers, (what, header)
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer", "a page URL may carry the token"
    assert "script-src 'self'" in answers["page"].headers["Content-Security-Policy"]
    assert "unsafe-inline" not in answers["page"].headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8765", "127.0.0.1"),
        ("localhost", "localhost"),
        ("LocalHost:80", "localhost"),  # host names are case-insensitive
        ("[::1]:8765", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),  # not a valid Host, but unambiguous
        ("[::1]evil.example", None),  # nothing but a port may follow the bracket
        ("[::1", None),
        ("[::1]:port", None),
        ("127.0.0.1:80:80", None),
        ("evil.example:8765", "evil.example"),
        ("", ""),
    ],
)
def test_host_header_parsing(header: str, name: str | None) -> None:
    assert _host_name(header) == name


@pytest.mark.parametrize(
    ("host", "status"),
    [("127.0.0.1:8765", 200), ("[::1]:8765", 200), ("LOCALHOST:8765", 200), ("localhost.evil.example", 400),
     ("[::1]evil.example", 400), ("127.0.0.1.nip.io", 400), ("[::2]:8765", 400), ("", 400)],
)
def test_loopback_arena_answers_only_loopback_names(tmp_path: Path, host: str, status: int) -> None:
    client = TestClient(create_app(make_arena(tmp_path)), base_url="http://127.0.0.1")
    assert client.get("/api/config", headers={"Host": host}).status_code == status


def test_a_user_supplied_token_with_url_characters_works_in_every_link(tmp_path: Path) -> None:
    token = "tok&rater=x/y+z%41#"  # the user chose it: '&', '=', '/', '+', '%' and '#' must survive
    client = TestClient(create_app(make_arena(tmp_path, token=token)), base_url="http://127.0.0.1")
    assert client.get("/api/config", params={"token": token}).status_code == 200
    assert client.get("/api/config", params={"token": token[:-1]}).status_code == 401
    assert client.get("/api/config", params={"token": "tok"}).status_code == 401  # no '&' split
    page = client.get("/", params={"token": token})
    assert page.status_code == 200
    # The page's own links carry the token URL-encoded, so following them authenticates.
    encoded = "tok%26rater%3Dx%2Fy%2Bz%2541%23"
    assert f"?token={encoded}" in page.text and token not in page.text
    assert client.get(f"/static/arena.js?token={encoded}").status_code == 200


def test_concurrent_votes_on_one_pair_store_exactly_one(tmp_path: Path) -> None:
    arena = make_arena(tmp_path)
    row, _ = arena.issue("ann", "style")
    # Two server processes share the file: a second connection to the same database votes too.
    other = Store(tmp_path / "a.sqlite")
    stores = [arena.store, other] * 4
    barrier = threading.Barrier(len(stores))
    outcomes: list[object] = []

    def cast(store: Store, choice: str) -> None:
        barrier.wait()
        try:
            outcomes.append(store.record_vote(row["pair_id"], "ann", choice)["choice"])
        except Refused as exc:
            outcomes.append(exc.status)

    threads = [threading.Thread(target=cast, args=(s, "ab"[k % 2])) for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    accepted = [o for o in outcomes if o in ("a", "b")]
    assert len(outcomes) == 8 and len(accepted) == 1 and outcomes.count(409) == 7, outcomes
    assert [v["choice"] for v in other.votes()] == accepted


def test_concurrent_raters_each_get_their_own_pairs_and_every_vote_lands(tmp_path: Path) -> None:
    first = make_arena(tmp_path)
    second = make_arena(tmp_path)  # a second server on the same database
    raters = [f"r{k}" for k in range(6)]
    errors: list[BaseException] = []

    def rate(arena: Arena, rater: str) -> None:
        try:
            for _ in range(5):
                row, _ = arena.issue(rater, "style")
                again, _ = arena.issue(rater, "style")
                assert again["pair_id"] == row["pair_id"], "an open pair is shown again, not a new one"
                arena.store.record_vote(row["pair_id"], rater, "tie")
        except BaseException as exc:  # reported below, with the thread's rater
            errors.append(exc)

    threads = [threading.Thread(target=rate, args=((first, second)[k % 2], r)) for k, r in enumerate(raters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    votes = first.store.votes()
    assert len(votes) == 30 and len({v["pair_id"] for v in votes}) == 30
    for rater in raters:
        keys = [(v["prompt_id"], v["turn"], v["arm_left"], v["arm_right"]) for v in votes if v["rater"] == rater]
        assert len(keys) == 5 and len({(p, t, *sorted(a)) for p, t, *a in keys}) == 5, "no pair twice"
    # Each transaction saw the others' issued pairs: 30 pairs over 42 items, none handed out twice.
    assert max(first.store.load("style").values()) == 1
