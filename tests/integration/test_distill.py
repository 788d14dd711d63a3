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
