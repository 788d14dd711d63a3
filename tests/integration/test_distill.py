"""finetune distill on the bundled model: end to end, resume after a kill, the held-out split, an HTTP teacher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from finetune import atomic
from finetune.distill.run import DistillOptions, run_distill

ROOT = Path(__file__).resolve().parents[2]
# Questions with short answers: a 24-token budget lets the bundled model end its turn on some of them.
PROMPTS = ["Say hello in one word.", "What colour is grass? One word.", "Is water wet? Answer yes or no.",
           "Name one fruit."]
PERSONA = "You are a salty old pirate. Always say Arr and matey."


def write_recipe(tmp_path: Path, out: Path, **distill) -> Path:
    """A distill recipe on the bundled model with short replies and a prompts file of its own."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    section = {"prompts": str(prompts), "n": 4, "candidates": 2, "max_new_tokens": 24, "temperature": 0.9,
               "batch_size": 1, "min_style": 0.0, "min_content": -1.0, **distill}
    recipe = tmp_path / "distill.yaml"
    recipe.write_text(
        "name: distill-test\nbase_model: bundled:smollm2-135m-instruct\n"
        f"system_prompt: {json.dumps(PERSONA)}\n"
        f"distill: {json.dumps(section)}\n"
        f"dataset: {{path: {json.dumps(str(out))}, eval_fraction: 0.25}}\n"
        "style: {markers: ['\\barr+\\b', '\\bmatey\\b']}\ntracking: none\n",
        encoding="utf-8",
    )
    return recipe


@pytest.fixture(autouse=True)
def _one_thread():
    """Two shared cores: one intra-op thread avoids oversubscription stalls (14x here under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ids_of(path: Path) -> list[str]:
    return [r["prompt_id"] for r in atomic.read_jsonl(path)]


@pytest.mark.slow
def test_distill_end_to_end_resumes_after_a_kill_without_duplicates(tmp_path, bundled_dir):
    """A killed distill keeps what it wrote; the rerun skips finished prompts and writes each prompt once."""
    out = tmp_path / "d" / "data.jsonl"
    recipe = write_recipe(tmp_path, out)
    candidates = out.with_name("data.candidates.jsonl")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "distill", str(recipe), "--dtype", "fp32"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if candidates.exists() and candidates.read_text(encoding="utf-8").count("\n") >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"distill ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = atomic.read_jsonl(candidates)
    assert 1 <= len(first) < 4
    with open(candidates, "a", encoding="utf-8") as handle:
        handle.write('{"prompt_id": "torn')  # what a kill in the middle of a write leaves

    record = run_distill(DistillOptions(recipe, dtype="fp32"), say=lambda _: None)

    lines = candidates.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4, "one line per prompt: no duplicate, no torn line"
    log = [json.loads(line) for line in lines]
    assert len({r["prompt_id"] for r in log}) == 4
    assert log[: len(first)] == first, "the rerun kept the prompts finished before the kill"
    assert all(len(r["candidates"]) == 2 and r["base"]["text"] for r in log)
    scores = atomic.read_jsonl(out.with_name("data.scores.jsonl"))
    assert len(scores) == 8 and all("style" in s and "content_kept" in s for s in scores)
    kept = [s for s in scores if s["kept"]]
    assert all(s["passed"] for s in kept)
    rows = atomic.read_jsonl(out)
    assert [r["messages"][-1]["content"] for r in rows] == [s["text"] for s in kept]
    assert all(r["messages"][0]["role"] == "user" for r in rows), "the persona prompt is not in the data"
    assert record["status"] == "done" and record["result"]["kept"] == len(rows)
    assert record["generation"]["persona"] == PERSONA and record["teacher"]["kind"] == "local"

    # The held-out split compare uses on this dataset: none of its prompts is among the trained rows.
    from finetune.compare.prompts import heldout_split
    from finetune.recipe import load_recipe

    train, held = heldout_split(load_recipe(recipe))
    assert held, "eval_fraction 0.25 holds out a row"
    assert not {c.messages[0]["content"] for c in held} & {c.messages[0]["content"] for c in train}

    # A stricter threshold on the same candidates: nothing is generated again, and only passing rows stay.
    best = max((s["style"] or 0.0) for s in scores if s["passed"])
    if best > 0:
        run_distill(DistillOptions(recipe, dtype="fp32", overrides=[f"distill.min_style={best}"]), say=lambda _: None)
        assert atomic.read_jsonl(candidates) == log
        stricter = atomic.read_jsonl(out.with_name("data.scores.jsonl"))
        assert all(s["style"] >= best for s in stricter if s["kept"]) and any(s["kept"] for s in stricter)
        assert len(atomic.read_jsonl(out)) == sum(s["kept"] for s in stricter)


class _Teacher(BaseHTTPRequestHandler):
    replies = ["Arr matey, keep it in a cloth bag, aye.", "Keep it in a bag."]

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append(body)
        text = self.replies[len(self.server.seen) % 2]
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                           "usage": {"completion_tokens": 9}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_an_openai_compatible_endpoint_on_loopback_is_the_teacher(tmp_path, bundled_dir):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    httpd.seen = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "e" / "data.jsonl"
        recipe = write_recipe(tmp_path, out, n=2, batch_size=2, min_style=0.5)
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        record = run_distill(DistillOptions(recipe, teacher=url, teacher_model="pirate-7b", dtype="fp32"),
                             say=lambda _: None)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(httpd.seen) == 4  # 2 prompts x 2 candidates
    assert all(b["messages"][0] == {"role": "system", "content": PERSONA} for b in httpd.seen)
    assert {b["model"] for b in httpd.seen} == {"pirate-7b"} and {b["max_tokens"] for b in httpd.seen} == {24}
    rows = atomic.read_jsonl(out)
    assert len(rows) == 2 and {r["messages"][-1]["content"] for r in rows} == {_Teacher.replies[0]}
    assert record["teacher"] == {"kind": "endpoint", "url": f"{url}/chat/completions", "model": "pirate-7b",
                                 "system_prompt": "system turn"}
    assert record["result"]["filter_effect"]["kept"]["marker"] == 1.0


# --- the files agree after every ending; --force starts over; the output place ---------------------------------


@pytest.fixture
def endpoint():
    """The fake chat-completions teacher above, on loopback; yields (url, server)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    httpd.seen = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", httpd
    httpd.shutdown()
    httpd.server_close()


def quiet(_: str) -> None:
    pass


def provenance_of(out: Path) -> dict:
    return json.loads(out.with_name("data.provenance.json").read_text(encoding="utf-8"))


# The fake teacher's replies are never the plain reply word for word: content kept < 1, so nothing passes.
NOTHING_PASSES = "distill.min_content=1.0"


@pytest.mark.slow
def test_a_first_run_that_keeps_nothing_says_failed_not_running(tmp_path, bundled_dir, endpoint, monkeypatch,
                                                                capsys):
    from finetune.cli import main

    url, httpd = endpoint
    out = tmp_path / "e" / "data.jsonl"
    recipe = write_recipe(tmp_path, out, n=2, batch_size=2, min_style=0.5)
    monkeypatch.setattr(sys, "argv", ["finetune", "distill", str(recipe), "--teacher", url, "--dtype", "fp32",
                                      "--set", NOTHING_PASSES])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # the lines before it are the progress report
    assert info.value.code == 2 and "Traceback" not in err
    assert last.startswith("error: ") and "no candidate passed the filter" in last and last.endswith("max_new_tokens")
    record = provenance_of(out)
    assert record["status"] == "failed", "the provenance of a run that ended with an error says running"
    assert record["thresholds"]["min_content"] == 1.0 and record["result"]["kept"] == 0
    assert "no candidate passed" in record["error"] and not out.exists()
    assert len(httpd.seen) == 4

    # Lower thresholds: nothing is generated again, rows are kept.
    record = run_distill(DistillOptions(recipe, teacher=url, dtype="fp32"), say=quiet)
    assert len(httpd.seen) == 4 and record["status"] == "done" and len(atomic.read_jsonl(out)) == 2


@pytest.mark.slow
def test_a_filter_that_keeps_nothing_leaves_files_that_agree(tmp_path, bundled_dir, endpoint):
    """Scores, provenance and data agree after a filter that kept nothing; a user's data file is never removed."""
    from finetune.distill import DistillError

    url, httpd = endpoint
    out = tmp_path / "e" / "data.jsonl"
    recipe = write_recipe(tmp_path, out, n=2, batch_size=2, min_style=0.5)

    def distill(*overrides: str) -> dict:
        return run_distill(DistillOptions(recipe, teacher=url, dtype="fp32", overrides=list(overrides)), say=quiet)

    assert distill()["result"]["kept"] == 2 and len(atomic.read_jsonl(out)) == 2
    # Stricter: the data distill wrote for the earlier thresholds does not stay behind looking valid.
    with pytest.raises(DistillError) as info:
        distill(NOTHING_PASSES)
    scores = atomic.read_jsonl(out.with_name("data.scores.jsonl"))
    assert len(scores) == 4 and not any(s["passed"] or s["kept"] for s in scores)
    assert not out.exists(), "data.jsonl still holds rows the last filter rejected"
    failed = provenance_of(out)
    assert failed["status"] == "failed" and failed["thresholds"]["min_content"] == 1.0
    assert failed["data"] is None and failed["result"]["kept"] == 0
    message = str(info.value)
    assert "no candidate passed the filter" in message and f"removed {out}" in message and "\n" not in message

    # A data file edited by hand since distill wrote it is the user's: a failed filter leaves it as it is.
    distill()
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Arr, written by hand."}]}) + "\n")
    edited = out.read_bytes()
    # A rerun that would succeed is refused before it replaces the edited file (it did replace it).
    with pytest.raises(DistillError, match=f"{out}: changed since finetune distill wrote it .* --force"):
        distill()
    assert out.read_bytes() == edited and provenance_of(out)["status"] == "done"
    assert len(httpd.seen) == 4, "no run after the first generated anything"
    # --force takes the file over; a filter that then keeps nothing still leaves it as it is.
    with pytest.raises(DistillError, match="is not a file distill wrote .* and is left as it was"):
        run_distill(DistillOptions(recipe, teacher=url, dtype="fp32", force=True, overrides=[NOTHING_PASSES]),
                    say=quiet)
    assert out.read_bytes() == edited and provenance_of(out)["status"] == "failed"


@pytest.mark.slow
def test_a_refused_endpoint_leaves_a_failed_provenance_not_a_running_one(tmp_path, bundled_dir):
    from finetune.distill import DistillError

    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    port = closed.server_address[1]
    closed.server_close()
    out = tmp_path / "e" / "data.jsonl"
    recipe = write_recipe(tmp_path, out, n=2, batch_size=2)
    with pytest.raises(DistillError, match="cannot connect"):
        run_distill(DistillOptions(recipe, teacher=f"http://127.0.0.1:{port}", dtype="fp32"), say=quiet)
    record = provenance_of(out)
    assert record["status"] == "failed", "the provenance of a run that ended with an error says running"
    assert "cannot connect" in record["error"] and record["teacher"]["kind"] == "endpoint"


@pytest.mark.slow
def test_force_starts_over_and_a_refusal_names_the_changed_setting(tmp_path, bundled_dir, endpoint):
    """--force regenerates every prompt (as --help says); other settings are refused by name."""
    from finetune.distill import DistillError

    url, httpd = endpoint
    out = tmp_path / "e" / "data.jsonl"
    recipe = write_recipe(tmp_path, out, n=2, batch_size=2, min_style=0.5)
    run_distill(DistillOptions(recipe, teacher=url, dtype="fp32"), say=quiet)
    assert len(httpd.seen) == 4
    candidates = out.with_name("data.candidates.jsonl")

    said: list[str] = []
    record = run_distill(DistillOptions(recipe, teacher=url, dtype="fp32", force=True), say=said.append)
    assert len(httpd.seen) == 8, "--force regenerated nothing"
    assert said[0].endswith("0 already done")
    assert len(candidates.read_text(encoding="utf-8").splitlines()) == 2, "one line per prompt after starting over"
    assert record["status"] == "done" and record["result"]["kept"] == 2

    with pytest.raises(DistillError) as info:
        run_distill(DistillOptions(recipe, teacher=url, dtype="fp32", overrides=["distill.temperature=0.7"]),
                    say=quiet)
    assert "other generation settings (temperature: 0.9 -> 0.7)" in str(info.value)


@pytest.mark.slow
def test_set_distill_on_a_recipe_without_a_distill_section_never_aims_at_its_dataset(tmp_path, bundled_dir,
                                                                                    endpoint):
    """--set distill.* does not turn a hand-written dataset into the output (docs/distill.md, where files go)."""
    from finetune.paths import outputs_dir

    url, _httpd = endpoint
    dataset = tmp_path / "hand.jsonl"
    dataset.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                {"role": "assistant", "content": "Arr, matey."}]}) + "\n",
                       encoding="utf-8")
    before = dataset.read_bytes()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    recipe = tmp_path / "hand.yaml"
    recipe.write_text(
        "name: hand-test\nbase_model: bundled:smollm2-135m-instruct\n"
        f"system_prompt: {json.dumps(PERSONA)}\n"
        f"dataset: {{path: {json.dumps(str(dataset))}}}\n"
        "style: {markers: ['\\barr+\\b', '\\bmatey\\b']}\ntracking: none\n",
        encoding="utf-8",
    )
    overrides = [f"distill.prompts={prompts}", "distill.max_new_tokens=24", "distill.batch_size=2",
                 "distill.candidates=2", "distill.min_style=0.3", "distill.min_content=-1"]
    record = run_distill(DistillOptions(recipe, n=2, teacher=url, dtype="fp32", overrides=overrides), say=quiet)
    out = outputs_dir() / "hand-test.distill" / "data.jsonl"
    assert record["files"]["data"] == str(out) and not record["files"]["recipe_dataset"]
    assert len(atomic.read_jsonl(out)) == 2
    assert dataset.read_bytes() == before


@pytest.mark.slow
def test_a_smaller_prompt_set_keeps_the_finished_prompts_logged(tmp_path, bundled_dir, endpoint):
    """Prompts are not in the log's key: --n 1 after --n 2 uses one of them, and --n 2 again generates nothing."""
    url, httpd = endpoint
    out = tmp_path / "e" / "data.jsonl"
    recipe = write_recipe(tmp_path, out, n=2, batch_size=2, min_style=0.5)
    run_distill(DistillOptions(recipe, teacher=url, dtype="fp32"), say=quiet)
    assert len(httpd.seen) == 4
    assert run_distill(DistillOptions(recipe, n=1, teacher=url, dtype="fp32"), say=quiet)["result"]["prompts"] == 1
    assert len(ids_of(out.with_name("data.candidates.jsonl"))) == 2, "the prompt --n 1 left out was dropped"
    assert run_distill(DistillOptions(recipe, teacher=url, dtype="fp32"), say=quiet)["result"]["prompts"] == 2
    assert len(httpd.seen) == 4, "a prompt finished earlier was generated again"
