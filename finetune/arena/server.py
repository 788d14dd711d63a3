"""The arena web app: blind pair pages, a leaderboard page and the JSON API behind them (FastAPI)."""

from __future__ import annotations

import ipaddress
import json
import random
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from finetune.arena.criteria import QUESTIONS
from finetune.arena.ratings import CHOICES, build_results
from finetune.arena.samples import CompareSet, Item
from finetune.arena.schedule import next_item, orient
from finetune.arena.store import Refused, Store, now

# Only these files are ever served; the request names a key of this table, never a path.
_ASSETS = {
    "arena.css": "text/css; charset=utf-8",
    "arena.js": "text/javascript; charset=utf-8",
    "leaderboard.js": "text/javascript; charset=utf-8",
}
_PAGES = {"/": "index.html", "/leaderboard": "leaderboard.html"}
_MAX_RATER = 64
_SECURITY_HEADERS = {
    # Model text is only ever set with textContent; this policy is a second line of defence.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page URL may carry the token
    "Cache-Control": "no-store",
}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    """Return True when a bind address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """Return a fresh random access token for a non-loopback bind."""
    return secrets.token_urlsafe(16)


_HOST_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]*))(?::\d*)?$")


def _host_name(header: str) -> str | None:
    """Return the lower-cased host of a Host header ("[::1]:8765" -> "::1"), or None if malformed."""
    if header.count(":") > 1 and not header.startswith("["):
        try:  # a bare IPv6 address: not a valid Host, but unambiguous
            return str(ipaddress.IPv6Address(header))
        except ValueError:
            return None
    match = _HOST_RE.match(header)
    if match is None:
        return None  # e.g. "[::1]evil.example": only a port may follow the host
    return (match["v6"] or match["name"] or "").lower()


def _error(status: int, message: str) -> JSONResponse:
    """Return the JSON error body every refused request gets."""
    return JSONResponse({"error": message}, status_code=status)


@dataclass
class Arena:
    """Everything the app needs: the loaded compare folders, the store and the settings."""

    compares: dict[str, CompareSet]
    store: Store
    criteria: list[str]
    token: str | None = None
    check_host: bool = True
    seed: int | None = None
    rounds: int = 1000
    items: list[Item] = field(init=False)

    def __post_init__(self) -> None:
        self.items = [item for compare in self.compares.values() for item in compare.items()]
        self.rng = random.Random(self.seed)
        self._results_cache: tuple[tuple, dict] | None = None
        self._results_lock = threading.Lock()

    @property
    def sources(self) -> list[str]:
        """Return the resolved paths of the loaded compare folders."""
        return list(self.compares)

    def _sample_pair(self, row: dict) -> tuple | None:
        """Return the (left, right) samples of an issued row, or None if its compare data is gone."""
        compare = self.compares.get(row["source"])
        try:
            return (
                compare.sample(row["prompt_id"], row["turn"], row["arm_left"]),
                compare.sample(row["prompt_id"], row["turn"], row["arm_right"]),
            )
        except (AttributeError, KeyError):
            return None

    def issue(self, rater: str, criterion: str) -> tuple[dict, tuple] | None:
        """Return the rater's open pair, or schedule and store a new one; None when all are seen."""
        with self.store.transaction():
            for row in self.store.pending(rater, criterion, self.sources):
                samples = self._sample_pair(row)
                if samples:
                    return row, samples  # a reload shows the same pair in the same order
            seen_keys = self.store.seen(rater, criterion)
            load = self.store.load(criterion)

            def key(item: Item) -> tuple:
                return (item.source, item.prompt_id, item.turn, *item.arms)

            counts = {item: load.get(key(item), 0) for item in self.items}
            seen = {item for item in self.items if key(item) in seen_keys}
            item = next_item(self.items, counts, seen, self.rng)
            if item is None:
                return None
            left, right = orient(item, self.rng)
            compare = self.compares[item.source]
            sample_left = compare.sample(item.prompt_id, item.turn, left)
            sample_right = compare.sample(item.prompt_id, item.turn, right)
            row = {
                "pair_id": secrets.token_urlsafe(12),
                "rater": rater,
                "criterion": criterion,
                "source": item.source,
                "run": compare.run,
                "prompt_id": item.prompt_id,
                "turn": item.turn,
                "arm_a": item.arms[0],
                "arm_b": item.arms[1],
                "arm_left": left,
                "arm_right": right,
                "style_left": sample_left.style,
                "style_right": sample_right.style,
                "shown_at": now(),
            }
            self.store.add_issued(row)
            return row, (sample_left, sample_right)

    def progress(self, rater: str, criterion: str) -> dict:
        """Return how many pairs this rater has voted on and how many exist, for one criterion."""
        return {"voted": self.store.voted_count(rater, criterion, self.sources), "total": len(self.items)}

    def results(self, anchor: str | None) -> dict:
        """Return the leaderboard JSON for the loaded compare folders (cached until the next vote)."""
        votes = self.store.votes(self.sources)
        if anchor is not None and not any(anchor in (v["arm_left"], v["arm_right"]) for v in votes):
            # As `finetune arena results --anchor` refuses it: the ratings would say "ARM = 1000" and not be.
            raise Refused(422, f"anchor: no votes involve arm {anchor!r}")
        key = (len(votes), votes[-1]["id"] if votes else 0, anchor)
        with self._results_lock:
            if self._results_cache and self._results_cache[0] == key:
                return self._results_cache[1]
            results = build_results(votes, rounds=self.rounds, seed=0, anchor=anchor)
            results["questions"] = {c: QUESTIONS[c] for c in QUESTIONS}
            results["total_votes"] = len(votes)
            self._results_cache = (key, results)
            return results


def _pair_payload(arena: Arena, row: dict, samples: tuple, criterion: str, rater: str) -> dict:
    """Build the blind pair JSON: texts and context only, never an arm name or a score."""
    left, right = samples
    return {
        "pair_id": row["pair_id"],
        "criterion": criterion,
        "question": QUESTIONS[criterion],
        "kind": left.kind,
        "prompt_id": row["prompt_id"],
        "turn": row["turn"],
        "prompt": [{"role": "user", "content": text} for text in left.user_turns()],
        "a": left.text,
        "b": right.text,
        # Each side's own earlier replies (multi-turn) are shown only in that side's column.
        "a_history": left.earlier_replies(),
        "b_history": right.earlier_replies(),
        "progress": arena.progress(rater, criterion),
    }


def _check_rater(value: object) -> str:
    """Return a cleaned rater name or raise Refused(422)."""
    if not isinstance(value, str) or not value.strip():
        raise Refused(422, "missing rater: give a name with ?rater=NAME")
    name = value.strip()
    if len(name) > _MAX_RATER or not name.isprintable():
        raise Refused(422, f"rater name must be 1 to {_MAX_RATER} printable characters")
    return name


def _read_asset(name: str) -> str:
    """Read one of the package's own static files."""
    return (resources.files("finetune.arena") / "static" / name).read_text(encoding="utf-8")


def create_app(arena: Arena, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """Build the FastAPI app: token and Host checks, pages, assets and the JSON API.

    `on_shutdown` runs when the server stops gracefully (Ctrl-C, SIGTERM), before the process exits.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await run_in_threadpool(on_shutdown)

    app = FastAPI(title="finetune arena", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    token_qs = f"?token={quote(arena.token, safe='')}" if arena.token else ""
    pages = {route: _read_asset(name).replace("__TOKEN_QS__", token_qs) for route, name in _PAGES.items()}
    assets = {name: _read_asset(name) for name in _ASSETS}

    @app.middleware("http")
    async def guard(request: Request, call_next):  # noqa: ANN001, ANN202 (starlette signature)
        if arena.check_host and _host_name(request.headers.get("host", "")) not in _LOOPBACK_NAMES:
            # A loopback server only answers to loopback names: stops DNS-rebinding pages voting.
            response = _error(400, "unexpected Host header for a loopback-only arena")
        elif arena.token and not secrets.compare_digest(
            (request.query_params.get("token") or request.headers.get("x-arena-token") or "").encode(),
            arena.token.encode(),
        ):
            response = _error(401, "missing or wrong token: open the link printed by `finetune arena`")
        else:
            response = await call_next(request)
        # Refusals too: an error page framed or sniffed is still a page on this origin.
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid request")

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(pages["/"])

    @app.get("/leaderboard", include_in_schema=False)
    def leaderboard_page() -> HTMLResponse:
        return HTMLResponse(pages["/leaderboard"])

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in assets:
            return _error(404, "not found")
        return Response(assets[name], media_type=_ASSETS[name])

    @app.get("/api/config")
    def config() -> dict:
        return {
            "criteria": [{"id": c, "question": QUESTIONS[c]} for c in arena.criteria],
            "choices": list(CHOICES),
            "folders": [compare.name for compare in arena.compares.values()],
        }

    @app.get("/api/pair")
    def pair(rater: str | None = None, criterion: str | None = None) -> dict:
        name = _check_rater(rater)
        criterion = criterion or arena.criteria[0]
        if criterion not in arena.criteria:
            served = ", ".join(arena.criteria)
            raise Refused(422, f"criterion {criterion!r} is not served; choose one of {served}")
        issued = arena.issue(name, criterion)
        if issued is None:
            return {
                "done": True,
                "criterion": criterion,
                "question": QUESTIONS[criterion],
                "progress": arena.progress(name, criterion),
            }
        row, samples = issued
        return _pair_payload(arena, row, samples, criterion, name)

    @app.post("/api/vote")
    async def vote(request: Request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise Refused(415, "send the vote as application/json")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Refused(400, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "body must be a JSON object with pair_id, rater and choice")
        name = _check_rater(body.get("rater"))
        pair_id = body.get("pair_id")
        if not isinstance(pair_id, str) or not pair_id:
            raise Refused(422, "missing pair_id")
        choice = body.get("choice")
        if choice not in CHOICES:
            raise Refused(422, f"choice must be one of {', '.join(CHOICES)}")
        row = await run_in_threadpool(arena.store.record_vote, pair_id, name, choice)
        progress = await run_in_threadpool(arena.progress, name, row["criterion"])
        return {
            "ok": True,
            "pair_id": pair_id,
            "choice": choice,
            "a": {"arm": row["arm_left"], "style": row["style_left"]},
            "b": {"arm": row["arm_right"], "style": row["style_right"]},
            "run": row["run"],
            "progress": progress,
        }

    @app.get("/api/results")
    async def results(anchor: str | None = None) -> dict:
        return await run_in_threadpool(arena.results, anchor or None)

    return app


def serve(app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
    """Run the app with uvicorn until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)).run()


def asset_dir() -> Path:
    """Return the folder of the page files (for documentation and tests)."""
    return Path(str(resources.files("finetune.arena") / "static"))
