"""SQLite storage for the arena: pairs issued to raters and one row per vote (WAL, durable commits)."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from finetune.errors import RunError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS issued (
    pair_id     TEXT PRIMARY KEY,
    rater       TEXT NOT NULL,
    criterion   TEXT NOT NULL,
    source      TEXT NOT NULL,
    run         TEXT NOT NULL,
    prompt_id   TEXT NOT NULL,
    turn        INTEGER NOT NULL,
    arm_a       TEXT NOT NULL,
    arm_b       TEXT NOT NULL,
    arm_left    TEXT NOT NULL,
    arm_right   TEXT NOT NULL,
    style_left  REAL,
    style_right REAL,
    shown_at    TEXT NOT NULL,
    UNIQUE (rater, criterion, source, prompt_id, turn, arm_a, arm_b)
);
CREATE TABLE IF NOT EXISTS votes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id     TEXT NOT NULL UNIQUE REFERENCES issued (pair_id),
    rater       TEXT NOT NULL,
    criterion   TEXT NOT NULL,
    source      TEXT NOT NULL,
    run         TEXT NOT NULL,
    prompt_id   TEXT NOT NULL,
    turn        INTEGER NOT NULL,
    arm_left    TEXT NOT NULL,
    arm_right   TEXT NOT NULL,
    choice      TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'bad')),
    style_left  REAL,
    style_right REAL,
    shown_at    TEXT NOT NULL,
    voted_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS issued_by_rater ON issued (rater, criterion);
"""

_ISSUED_COLUMNS = (
    "pair_id, rater, criterion, source, run, prompt_id, turn, arm_a, arm_b, arm_left, arm_right, "
    "style_left, style_right, shown_at"
)


class Refused(Exception):
    """A request the arena turns down without changing anything (the server answers it with `status`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def now() -> str:
    """Return the current UTC time as ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Store:
    """One arena database; safe to share between the server's threads (one connection behind a lock)."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so read-decide-write is atomic
            # even when two server processes share the file.
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # a vote is committed to disk before we answer
            self._conn.execute("PRAGMA foreign_keys=ON")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RunError(f"{self.path}: arena database version {version} is newer than this finetune")
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not create and not {"issued", "votes"} <= tables:
                raise RunError(f"{self.path}: not an arena database (no issued/votes tables)")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise RunError(f"{self.path}: not an arena database ({exc})") from None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the write lock (threads and processes) for a read-decide-write sequence."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def pending(self, rater: str, criterion: str, sources: list[str]) -> list[dict]:
        """Return the pairs issued to this rater for this criterion and not yet voted, oldest first."""
        with self._lock:
            marks = ",".join("?" * len(sources))
            rows = self._conn.execute(
                f"SELECT {_ISSUED_COLUMNS} FROM issued i "
                f"WHERE rater = ? AND criterion = ? AND source IN ({marks}) "
                "AND NOT EXISTS (SELECT 1 FROM votes v WHERE v.pair_id = i.pair_id) ORDER BY shown_at",
                (rater, criterion, *sources),
            )
            return [dict(r) for r in rows]

    def seen(self, rater: str, criterion: str) -> set[tuple[str, str, int, str, str]]:
        """Return (source, prompt_id, turn, arm_a, arm_b) of every pair already issued to this rater."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT source, prompt_id, turn, arm_a, arm_b FROM issued WHERE rater = ? AND criterion = ?",
                (rater, criterion),
            )
            return {tuple(r) for r in rows}

    def load(self, criterion: str) -> Counter:
        """Return, per (source, prompt_id, turn, arm_a, arm_b), how many pairs were issued for a criterion.

        Issued pairs count (voted or not) so that raters working at the same time are spread out.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT source, prompt_id, turn, arm_a, arm_b, COUNT(*) FROM issued WHERE criterion = ? "
                "GROUP BY source, prompt_id, turn, arm_a, arm_b",
                (criterion,),
            )
            return Counter({tuple(r[:5]): r[5] for r in rows})

    def add_issued(self, row: dict) -> None:
        """Insert one issued pair (inside a transaction)."""
        with self._lock:
            names = [c.strip() for c in _ISSUED_COLUMNS.split(",")]
            self._conn.execute(
                f"INSERT INTO issued ({_ISSUED_COLUMNS}) VALUES ({','.join('?' * len(names))})",
                [row[n] for n in names],
            )

    def voted_count(self, rater: str, criterion: str, sources: list[str]) -> int:
        """Return how many votes this rater cast for a criterion over the given compare folders."""
        with self._lock:
            marks = ",".join("?" * len(sources))
            return self._conn.execute(
                f"SELECT COUNT(*) FROM votes WHERE rater = ? AND criterion = ? AND source IN ({marks})",
                (rater, criterion, *sources),
            ).fetchone()[0]

    def record_vote(self, pair_id: str, rater: str, choice: str) -> dict:
        """Store a vote on an issued pair; raise Refused (and change nothing) for a bad request."""
        with self.transaction() as conn:
            query = f"SELECT {_ISSUED_COLUMNS} FROM issued WHERE pair_id = ?"
            issued = conn.execute(query, (pair_id,)).fetchone()
            if issued is None:
                raise Refused(404, f"unknown pair_id {pair_id!r}")
            if issued["rater"] != rater:
                raise Refused(403, "this pair was issued to another rater")
            if conn.execute("SELECT 1 FROM votes WHERE pair_id = ?", (pair_id,)).fetchone():
                raise Refused(409, "this pair already has a vote")
            row = dict(issued)
            row.update(choice=choice, voted_at=now())
            conn.execute(
                "INSERT INTO votes (pair_id, rater, criterion, source, run, prompt_id, turn, arm_left, "
                "arm_right, choice, style_left, style_right, shown_at, voted_at) "
                "VALUES (:pair_id, :rater, :criterion, :source, :run, :prompt_id, :turn, :arm_left, "
                ":arm_right, :choice, :style_left, :style_right, :shown_at, :voted_at)",
                row,
            )
        return row

    def votes(self, sources: list[str] | None = None) -> list[dict]:
        """Return every vote row (optionally only for some compare folders), oldest first."""
        with self._lock:
            if sources is None:
                rows = self._conn.execute("SELECT * FROM votes ORDER BY id")
            else:
                marks = ",".join("?" * len(sources))
                query = f"SELECT * FROM votes WHERE source IN ({marks}) ORDER BY id"
                rows = self._conn.execute(query, sources)
            return [dict(r) for r in rows]

    def vote_total(self) -> int:
        """Return the number of votes in the database."""
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
