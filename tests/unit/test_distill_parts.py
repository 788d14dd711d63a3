"""finetune distill without a generating model: prompt files, the held-out split, the filter, the endpoint client."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from finetune.compare.metrics import compile_markers
from finetune.distill import DistillError
from finetune.distill.filter import Thresholds, filter_effect, score_candidates
from finetune.distill.prompts import POOL, normalise, read_prompts, select_prompts
from finetune.distill.teacher import EndpointTeacher, is_loopback, supports_system, with_persona
from finetune.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
PIRATE_MARKERS = compile_markers([r"\barr+\b", r"\bmatey\b", r"\bye\b"])


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")
    return path


# --- prompts --------------------------------------------------------------------------------------------


def test_bundled_pool_is_english_and_japanese_and_unique():
    prompts = read_prompts(POOL)
    assert len(prompts) >= 100
    assert {p.lang for p in prompts} == {"en", "ja"}
    assert len({p.id for p in prompts}) == len(prompts), "the pool holds a duplicate prompt"
    assert (POOL.parent / "README.md").read_text().count("CC0") >= 1, "the pool states its licence"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('["just", "a", "list"]', "expected a JSON object, got list"),
        ('{"prompt": ""}', "'prompt' must be a non-empty string"),
        ('{"question": "hi?"}', "expected a 'prompt' string or a 'messages' list"),
        ('{"messages": [{"role": "assistant", "content": "Arr"}]}', "no user turn before the first assistant"),
        ('{"messages": "hi"}', "'messages' must be a list"),
        ('{"prompt": "hi"', "invalid JSON"),
    ],
)
def test_prompts_file_in_the_wrong_shape_names_file_and_line(tmp_path, line, expected):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "fine"}, line])
    with pytest.raises(DistillError) as info:
        read_prompts(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_messages_rows_keep_the_user_turns_before_the_first_reply(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"messages": [
        {"role": "system", "content": "be terse"}, {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "later"}]}])
    assert read_prompts(path)[0].messages == [{"role": "user", "content": "Hi!"}]


def test_selection_deduplicates_and_never_takes_compares_prompts(tmp_path, monkeypatch):
    """Held-out rows of the recipe's dataset and datasets/eval/* prompts are compare's: never distilled."""
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(ROOT / "recipes" / "pirate-smollm2.yaml")
    from finetune.compare.prompts import heldout_split

    held_out = next(m["content"] for m in heldout_split(recipe)[1][0].messages if m["role"] == "user")
    long_prompt = json.loads((ROOT / "datasets/eval/long_prompts.jsonl").read_text().splitlines()[0])["prompt"]
    turn = json.loads((ROOT / "datasets/eval/pirate_conversations.jsonl").read_text().splitlines()[0])["turns"][1]
    path = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "How do I fold a paper boat?"}, {"prompt": "  how do I FOLD a paper boat? "},
        {"prompt": held_out}, {"prompt": long_prompt.upper()}, {"prompt": turn}, {"prompt": "Why is the sea salty?"},
    ])
    selection = select_prompts(recipe, str(path), None, 0, tmp_path / "out.jsonl")
    texts = {normalise(p.messages[0]["content"]) for p in selection.prompts}
    assert texts == {normalise("How do I fold a paper boat?"), normalise("Why is the sea salty?")}
    assert (selection.total, selection.duplicates, selection.reserved) == (6, 1, 3)


def test_bundled_language_filter(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(ROOT / "recipes" / "pirate-smollm2.yaml")
    ja = select_prompts(recipe, "bundled:ja", None, 0, tmp_path / "o.jsonl").prompts
    assert ja and all(p.lang == "ja" for p in ja)
    with pytest.raises(DistillError, match="en and ja only"):
        select_prompts(recipe, "bundled:fr", None, 0, tmp_path / "o.jsonl")


# --- the filter -----------------------------------------------------------------------------------------


def cand(text: str, ended: bool = True) -> dict:
    return {"text": text, "completion_tokens": 20 if ended else 48, "ended": ended}


RECORDS = [
    {"prompt_id": "p1", "messages": [{"role": "user", "content": "How do I boil an egg?"}],
     "base": cand("Put the egg in boiling water for about seven minutes, then cool it in cold water."),
     "candidates": [
         cand("Boil the egg for seven minutes, then cool it in cold water."),  # no pirate voice: style 0
         cand("Arr matey, boil yer egg in the pot fer seven minutes, then cool it in cold water, aye!"),
         cand("Arr, arr, arr, arr, arr, arr, arr, arr, arr, arr, arr, arr, arr, arr, arr, arr, arr, arr"),  # loop
     ]},
    {"prompt_id": "p2", "messages": [{"role": "user", "content": "Why is the sky blue?"}],
     "base": cand("Sunlight is scattered by the air, and blue light is scattered the most."),
     "candidates": [
         cand("Arr matey, the air scatters the sunlight and blue light be scattered most of all", ended=False),
         cand("Sunlight is scattered by air molecules; blue scatters the most."),
     ]},
]


def test_filter_keeps_only_passing_rows_and_the_best_of_them():
    rows, info = score_candidates(RECORDS, PIRATE_MARKERS, Thresholds(min_style=0.5, min_content=0.3))
    by = {(r["prompt_id"], r["candidate"]): r for r in rows}
    assert len(rows) == 5
    assert by[("p1", 0)]["reasons"] == ["style 0.00 < 0.5"]
    assert by[("p1", 2)]["loop"] and "loops" in by[("p1", 2)]["reasons"]
    assert by[("p1", 1)]["passed"] and by[("p1", 1)]["kept"]
    assert by[("p2", 0)]["reasons"] == ["hit the token limit"]
    assert not any(r["kept"] for r in rows if r["prompt_id"] == "p2"), "no candidate of p2 passes"
    assert all(r["passed"] for r in rows if r["kept"])
    assert all(r["content_kept"] is not None for r in rows)
    assert info["folds"][0]["available"] is False  # too few replies for the classifier: markers only
    effect = filter_effect(rows)
    assert effect["kept"]["style"] == 1.0 and effect["all_candidates"]["style"] == pytest.approx(0.6)


def test_filter_drops_a_reply_that_lost_the_content():
    records = [{**RECORDS[0], "candidates": [cand("Arr matey, the treasure map be hidden under the old ship's deck!")]}]
    rows, _ = score_candidates(records, PIRATE_MARKERS, Thresholds(min_style=0.5, min_content=0.5))
    assert rows[0]["content_kept"] < 0.5 and not rows[0]["kept"]
    assert rows[0]["reasons"][0].startswith("content ")


# --- teachers -------------------------------------------------------------------------------------------


def test_persona_goes_into_the_first_user_turn_when_the_template_has_no_system_role(bundled_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_dir))
    assert supports_system(tokenizer)
    tokenizer.chat_template = (  # Gemma-style: refuses a system turn
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<turn>{{ m['content'] }}</turn>{% endfor %}"
    )
    assert not supports_system(tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    assert not supports_system(tokenizer), "a template that silently drops the system turn"
    merged = with_persona([{"role": "user", "content": "Hi"}], "Be a pirate.", native_system=False)
    assert merged == [{"role": "user", "content": "Be a pirate.\n\nHi"}]


def test_endpoint_must_be_loopback_unless_allowed():
    assert is_loopback("http://127.0.0.1:8080") and is_loopback("http://localhost/v1") and is_loopback("http://[::1]:1")
    assert not is_loopback("http://10.0.0.2:8080")
    with pytest.raises(DistillError, match="--allow-remote-teacher"):
        EndpointTeacher("http://example.com:8080", None, 5)
    EndpointTeacher("http://example.com:8080", None, 5, allow_remote=True)
    with pytest.raises(DistillError, match="http"):
        EndpointTeacher("ftp://127.0.0.1/", None, 5)


class _Handler(BaseHTTPRequestHandler):
    mode = "ok"

    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        json.loads(self.rfile.read(length))
        if self.server.mode == "slow":
            time.sleep(2)
        if self.server.mode == "error":
            body = b'{"error": "model not loaded"}'
            self.send_response(503)
        else:
            body = json.dumps({"choices": [{"message": {"content": "Arr!"}, "finish_reason": "length"}]}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.mode = "ok"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_endpoint_errors_are_one_line(server):
    url = f"http://127.0.0.1:{server.server_address[1]}"
    prompt = [[{"role": "user", "content": "hi"}]]
    reply = EndpointTeacher(url, None, 5).sample(prompt, "Be a pirate.", 1, 8, 0.7, 0)[0][0]
    assert reply.text == "Arr!" and reply.ended is False  # finish_reason "length": it hit the limit
    server.mode = "error"
    with pytest.raises(DistillError, match=r"HTTP 503 .*model not loaded"):
        EndpointTeacher(url, None, 5).sample(prompt, None, 1, 8, 0.7, 0)
    server.mode = "slow"
    with pytest.raises(DistillError, match=r"no reply within 0.5 s"):
        EndpointTeacher(url, None, 0.5).sample(prompt, None, 1, 8, 0.7, 0)
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = closed.server_address[1]
    closed.server_close()
    with pytest.raises(DistillError, match="cannot connect .*is the server running"):
        EndpointTeacher(f"http://127.0.0.1:{port}/v1", None, 5).sample(prompt, None, 1, 8, 0.7, 0)


# --- the command's refusals (before any model is loaded) ---------------------------------------------------


def run_cli(monkeypatch, capsys, *args):
    from finetune.cli import main

    monkeypatch.setattr(sys, "argv", ["finetune", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err.strip()


def test_missing_or_empty_persona_is_one_line(tmp_path, monkeypatch, capsys):
    data = write_lines(tmp_path / "d.jsonl", [{"prompt": "x"}])
    for extra in ("", "system_prompt: '   '\n"):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"name: r\n{extra}dataset: {{path: {data}}}\n", encoding="utf-8")
        code, err = run_cli(monkeypatch, capsys, "distill", str(recipe))
        assert code == 2
        assert err.startswith(f"error: {recipe}: system_prompt is missing or empty") and "\n" not in err


def test_a_hand_written_dataset_is_never_overwritten(tmp_path, monkeypatch, capsys):
    data = write_lines(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                           {"role": "assistant", "content": "Arr"}]}])
    before = data.read_bytes()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nsystem_prompt: Be a pirate.\ndataset: {{path: {data}}}\ndistill: {{n: 2}}\n",
                      encoding="utf-8")
    code, err = run_cli(monkeypatch, capsys, "distill", str(recipe))
    assert code == 2 and "was not written by finetune distill" in err
    assert data.read_bytes() == before


def distill_recipe(tmp_path: Path, section: str) -> Path:
    """A recipe with a hand-written dataset and a prompts file beside it; `section` is its distill line or ''."""
    write_lines(tmp_path / "prompts.jsonl", [{"prompt": "Name one fruit."}])
    data = write_lines(tmp_path / "hand.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                               {"role": "assistant", "content": "Arr"}]}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nsystem_prompt: Be a pirate.\ndataset: {{path: {data}}}\n{section}"
                      "style: {markers: [arr]}\n", encoding="utf-8")
    return recipe


def test_a_refusal_of_other_settings_names_what_the_log_is_keyed_on(tmp_path, monkeypatch, capsys):
    """Prompts are not in the key (a new prompt set reuses the finished ones): the refusal must not say they are."""
    out = tmp_path / "d" / "data.jsonl"
    recipe = distill_recipe(tmp_path, f"distill: {{prompts: {tmp_path / 'prompts.jsonl'}}}\n")
    out.parent.mkdir()
    write_lines(out.with_name("data.candidates.jsonl"), [{"prompt_id": "x", "settings_key": "another run"}])
    code, err = run_cli(monkeypatch, capsys, "distill", str(recipe), "--out", str(out), "--dtype", "fp32")
    assert code == 2 and "\n" not in err and "other generation settings" in err
    named = err.split("other generation settings (")[1].split(")")[0]
    assert "prompts" not in named, "the refusal lists prompts, which the settings key does not hold"
    assert all(k in named for k in ("persona", "teacher", "temperature", "max_new_tokens", "seed", "dtype"))


def test_set_distill_does_not_aim_the_output_at_a_hand_written_dataset(tmp_path, monkeypatch, capsys):
    """Only a distill: section in the recipe FILE sends the output to dataset.path, not a --set distill.* ."""
    recipe = distill_recipe(tmp_path, "")
    data = tmp_path / "hand.jsonl"
    before = data.read_bytes()
    # A log with other settings where the output should go: distill stops there, before loading any model.
    log = tmp_path / "outputs" / "r.distill" / "data.candidates.jsonl"
    log.parent.mkdir(parents=True)
    write_lines(log, [{"prompt_id": "x", "settings_key": "another run"}])
    code, err = run_cli(monkeypatch, capsys, "distill", str(recipe), "--n", "2", "--dtype", "fp32",
                        "--prompts", str(tmp_path / "prompts.jsonl"), "--set", "distill.min_style=0.3")
    assert code == 2 and "was not written by finetune distill" not in err, "the output went to dataset.path"
    assert err.startswith(f"error: {log}: was written with other generation settings")
    assert data.read_bytes() == before


def test_a_remote_teacher_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    # It was refused only after the base model had loaded (a base that cannot load failed first, on that).
    data = tmp_path / "out" / "data.jsonl"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nbase_model: {tmp_path / 'no-such-model'}\nsystem_prompt: Be a pirate.\n"
                      f"dataset: {{path: {data}}}\ndistill: {{n: 2}}\n", encoding="utf-8")
    code, err = run_cli(monkeypatch, capsys, "distill", str(recipe), "--teacher", "http://example.com:8080")
    assert code == 2 and err == ("error: --teacher http://example.com:8080: example.com is not this machine; "
                                 "pass --allow-remote-teacher to send prompts there"), err
