"""Bad input ends with one line naming file and line or key, exit code 2, no traceback, nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.cli import main

GOOD_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Arr!"}]}


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["finetune", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.err.strip()


def recipe(tmp_path, body="", data_rows=None, data_raw=None, name="demo"):
    data = tmp_path / "data.jsonl"
    if data_raw is not None:
        data.write_bytes(data_raw)
    elif data_rows is not None:
        data.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in data_rows) + "\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: {name}\ndataset:\n  path: {data}\ntracking: none\n{body}", encoding="utf-8")
    return path


CASES = {
    "unparsable yaml": dict(body="lora: {r: [\n", expect=["recipe.yaml: line", "invalid YAML"]),
    "unknown key": dict(body="lora:\n  rr: 8\n", expect=["recipe.yaml: line 6", "lora.rr", "did you mean 'r'"]),
    "wrong type": dict(body="training:\n  epochs: lots\n", expect=["training.epochs"]),
    "out of range": dict(body="lora:\n  dropout: 1.5\n", expect=["lora.dropout"]),
    "yaml tag": dict(body="x: !!python/object/apply:os.system ['true']\n", expect=["recipe.yaml"]),
    "path in name": dict(name="'../escape'", expect=["name", "path separators"]),
    "duplicate key": dict(body="training:\n  max_steps: 3\nlora: {r: 8}\ntraining:\n  batch_size: 2\n",
                          expect=["recipe.yaml: line 8: training: duplicate key (first at line 5)"]),
    "yes as a duration": dict(body="training:\n  max_time: yes\n",
                              expect=["line 6", "training.max_time: expected a duration like '7h', '90m' or "
                                      "'1h30m', got True"]),
    "value named once": dict(body="training:\n  max_time: 90 min\n",
                             expect=["training.max_time: expected a duration like '7h', '90m' or '1h30m', got "
                                     "'90 min'"], once="got"),
    "one of two kinds": dict(body="training:\n  learning_rate: Auto\n",
                             expect=["line 6", "training.learning_rate: expected a number or 'auto', got 'Auto'"],
                             absent="constrained-float"),
    "missing dataset": dict(rows=None, expect=["data.jsonl", "not found"]),
    "empty dataset": dict(raw=b"\n\n", expect=["data.jsonl", "empty"]),
    "invalid json": dict(rows=[GOOD_ROW, "{oops"], expect=["data.jsonl:2:", "invalid JSON"]),
    "no assistant": dict(rows=[{"messages": [{"role": "user", "content": "q"}]}],
                         expect=["data.jsonl:1:", "no assistant turn"]),
    "empty reply": dict(rows=[{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}],
                        expect=["data.jsonl:1:", "empty assistant reply"]),
    "unknown role": dict(rows=[{"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]}],
                         expect=["data.jsonl:1:", "unknown role"]),
    "non-string content": dict(rows=[{"messages": [{"role": "user", "content": ["q"]},
                                                   {"role": "assistant", "content": "a"}]}],
                               expect=["data.jsonl:1:", "must be a string"]),
    "non-utf8": dict(raw=json.dumps(GOOD_ROW).encode() + b"\n\xff\xfe\n", expect=["data.jsonl:2:", "UTF-8"]),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, monkeypatch, capsys):
    spec = CASES[case]
    rows = spec.get("rows", [GOOD_ROW]) if "raw" not in spec else None
    path = recipe(tmp_path, spec.get("body", ""), rows, spec.get("raw"), spec.get("name", "demo"))
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(outputs))
    code, err = run_cli(monkeypatch, capsys, "train", str(path))
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in spec["expect"]:
        assert fragment in lines[0], (fragment, lines[0])
    if "once" in spec:
        assert lines[0].count(spec["once"]) == 1, lines[0]
    if "absent" in spec:
        assert spec["absent"] not in lines[0] and "more)" not in lines[0], lines[0]
    assert not outputs.exists() or not any(outputs.iterdir()), "nothing may be written on bad input"


def test_remote_code_model_needs_opt_in(tmp_path, monkeypatch, capsys):
    model = tmp_path / "custom-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "my-custom-arch", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"},
    }))
    path = recipe(tmp_path, f"base_model: {model}\n", [GOOD_ROW])
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(tmp_path / "outputs"))
    code, err = run_cli(monkeypatch, capsys, "train", str(path))
    assert code == 2 and "trust_remote_code: true" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_data_check_lists_bad_lines_and_exits_2(tmp_path, monkeypatch, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(GOOD_ROW) + "\n{x\n" + json.dumps({"messages": []}) + "\n")
    code, err = run_cli(monkeypatch, capsys, "data", "check", str(data))
    assert code == 2
    assert err.splitlines() == [f"{data}:2: invalid JSON: Expecting property name enclosed in double quotes "
                                f"(column 2)", f"{data}:3: 'messages' must be a non-empty list"]


def test_data_check_reads_the_file_as_the_recipes_format_says(tmp_path, monkeypatch, capsys):
    """`data check --recipe` finds what `train` would: a chat file under `format: alpaca` is wrong at line 1."""
    path = recipe(tmp_path, "", [GOOD_ROW, GOOD_ROW])
    path.write_text(path.read_text().replace("  path:", "  format: alpaca\n  path:"), encoding="utf-8")
    code, err = run_cli(monkeypatch, capsys, "data", "check", str(tmp_path / "data.jsonl"), "--recipe", str(path))
    assert code == 2
    assert err.splitlines()[0] == f"{tmp_path / 'data.jsonl'}:1: a messages row but dataset.format is alpaca"


def test_data_check_names_the_rows_max_length_cuts_to_no_reply(tmp_path, monkeypatch, capsys):
    long_row = {"messages": [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "Arr!"}]}
    path = recipe(tmp_path, "", [GOOD_ROW, long_row, GOOD_ROW, long_row])
    path.write_text(path.read_text().replace("  path:", "  max_length: 32\n  path:"), encoding="utf-8")
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(sys, "argv", ["finetune", "data", "check", str(tmp_path / "data.jsonl"), "--recipe", str(path)])
    try:
        main()
    except SystemExit as exc:  # typer may end with SystemExit(0)
        assert not exc.code, capsys.readouterr()
    out = " ".join(capsys.readouterr().out.split())
    assert ("2 of 4 rows would be dropped in training: dataset.max_length=32 cuts off every reply (lines 2, 4)"
            in out), out


def test_a_set_override_is_blamed_not_a_line_of_the_file(tmp_path, monkeypatch, capsys):
    path = recipe(tmp_path, "training:\n  max_steps: 3\n", [GOOD_ROW])
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(tmp_path / "outputs"))
    code, err = run_cli(monkeypatch, capsys, "recipe", "show", str(path), "--set", "training.max_step=3")
    assert code == 2 and err == ("error: --set training.max_step=3: training.max_step: unknown key "
                                 "(did you mean 'max_steps'?)"), err
    code, err = run_cli(monkeypatch, capsys, "recipe", "show", str(path), "--set", "training.max_steps=abc")
    assert code == 2 and err.startswith("error: --set training.max_steps=abc: training.max_steps: "), err
    # the file's own mistakes still name their line
    path.write_text(path.read_text().replace("max_steps: 3", "max_steps: x"), encoding="utf-8")
    code, err = run_cli(monkeypatch, capsys, "recipe", "show", str(path), "--set", "lora.r=4")
    assert code == 2 and err.startswith(f"error: {path}: line 6: training.max_steps: "), err


def test_real_process_prints_no_traceback(tmp_path):
    path = recipe(tmp_path, "lora:\n  alpah: 8\n", [GOOD_ROW])
    done = subprocess.run([sys.executable, "-m", "finetune", "train", str(path)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("lora.alpah: unknown key (did you mean 'alpha'?)")
    assert "Traceback" not in done.stderr
    debug = subprocess.run([sys.executable, "-m", "finetune", "--debug", "train", str(path)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_existing_run_is_not_overwritten_without_force(tmp_path, monkeypatch, capsys):
    path = recipe(tmp_path, "", [GOOD_ROW] * 3)
    outputs = tmp_path / "outputs"
    run = outputs / "demo"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "completed"}))
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(outputs))
    code, err = run_cli(monkeypatch, capsys, "train", str(path))
    assert code == 2 and "completed run" in err and "--force" in err
    assert json.loads((run / "summary.json").read_text()) == {"status": "completed"}
    assert Path(run / "summary.json").exists()


def test_usage_errors_are_typers_own_exit_2(monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "train")
    assert code == 2 and "Missing argument" in err and "Traceback" not in err
    code, err = run_cli(monkeypatch, capsys, "exprot", "run")
    assert code == 2 and "Did you mean 'export'?" in err, err


def test_arena_module_goes_through_the_same_funnel(tmp_path):
    done = subprocess.run([sys.executable, "-m", "finetune.arena", "results", str(tmp_path / "none.sqlite")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_compare_rejects_a_budget_that_is_no_duration(tmp_path, monkeypatch, capsys):
    path = recipe(tmp_path, data_rows=[GOOD_ROW] * 4)
    code, err = run_cli(monkeypatch, capsys, "compare", str(path), "--max-time", "soon")
    assert code == 2
    assert err.splitlines()[-1] == (
        "error: --max-time soon: expected a duration like '7h', '90m' or '1h30m', got 'soon'"
    )


@pytest.mark.parametrize(("args", "fragment"), [
    (["--gpu", ""], "--gpu '': expected a catalogue GPU"),
    (["--gpu", "4090", "--gpus", "100000"], "--gpus 100000: 3 training rows make 2 batches of 2 "
                                             "(training.batch_size); more GPUs than that have nothing to train on "
                                             "(at most 2)"),
])
def test_estimate_refuses_gpu_options_it_would_ignore(args, fragment, tmp_path, monkeypatch, capsys):
    # An empty --gpu fell through to this machine; 100000 GPUs shared 2 batches and printed 0.1 min.
    path = recipe(tmp_path, "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\ntraining: {batch_size: 2}\n",
                  [GOOD_ROW] * 3)
    code, err = run_cli(monkeypatch, capsys, "estimate", str(path), *args)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert fragment in err, err


def test_estimate_gpus_without_a_gpu_is_refused_before_the_probe(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU to multiply")
    import finetune.estimate.cli as estimate_cli

    probed = []
    monkeypatch.setattr(estimate_cli, "_probe", lambda r: probed.append(r))  # a probe's minutes, not waited for
    path = recipe(tmp_path, "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n", [GOOD_ROW] * 3)
    code, err = run_cli(monkeypatch, capsys, "estimate", str(path), "--gpus", "4", "--probe")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--gpus 4: this machine has no GPU to multiply; name one with --gpu (e.g. --gpu 4090 --gpus 4)" in err
    assert probed == []


def test_arena_names_a_busy_port_once(tmp_path, monkeypatch, capsys):
    import socket

    from finetune.arena.fixture import write_compare_dir

    folder = write_compare_dir(tmp_path / "cmp")
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(tmp_path / "outputs"))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, err = run_cli(monkeypatch, capsys, "arena", "serve", str(folder), "--port", str(port))
    assert code == 2 and len(err.splitlines()) == 1, err
    # The socket module's own text repeated the address in a second pair of brackets.
    assert err == f"error: cannot listen on 127.0.0.1:{port} (Address already in use); pick another --port", err


@pytest.mark.parametrize("command", ["chat", "generate"])
def test_no_adapter_on_a_merged_model_is_refused_before_loading(command, tmp_path, monkeypatch, capsys):
    # A merged export holds the adapter in its weights: "without the adapter" answered as the adapter.
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(tmp_path / "outputs"))
    merged = tmp_path / "export-merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")  # refused before anything reads it
    gguf = tmp_path / "model-f16.gguf"
    gguf.write_bytes(b"")
    for target in (merged, gguf):
        code, err = run_cli(monkeypatch, capsys, command, str(target), "--no-adapter", "--prompt", "hi") \
            if command == "generate" else run_cli(monkeypatch, capsys, command, str(target), "--no-adapter")
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"--no-adapter: {target} has no separate adapter to leave out" in err, err


def test_generate_reads_a_bom_and_names_a_bad_line(tmp_path, monkeypatch, capsys):
    from finetune.chat import read_prompts

    good = tmp_path / "bom.jsonl"
    good.write_bytes(b'\xef\xbb\xbf{"prompt": "hi"}\n\n{"prompt": "a\xe2\x80\xa8b"}\n')  # U+2028 inside a string
    assert read_prompts(good) == [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a\u2028b"}]]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "hi"}\n\xff\xfe\n')
    code, err = run_cli(monkeypatch, capsys, "generate", "bundled:smollm2-135m-instruct", "--prompts", str(bad))
    assert code == 2 and err == f"error: {bad}:2: not valid UTF-8 (byte 0)", err


def test_generate_refuses_zero_new_tokens_before_loading(monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "generate", "bundled:smollm2-135m-instruct", "--prompt", "hi",
                        "--max-new-tokens", "0")
    assert code == 2 and "--max-new-tokens" in err and "Traceback" not in err, err


def test_a_mistyped_run_name_is_offered_the_closest_run(tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "outputs"
    (outputs / "pirate-smollm2").mkdir(parents=True)
    (outputs / "pirate-smollm2" / "recipe.yaml").write_text("name: pirate-smollm2\n")
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(outputs))
    code, err = run_cli(monkeypatch, capsys, "generate", "pirate-smollm3", "--prompt", "hi")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"pirate-smollm3: no run of that name in {outputs} (did you mean 'pirate-smollm2'?)" in err, err


def test_a_folder_holding_a_gguf_names_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(tmp_path / "outputs"))
    folder = tmp_path / "export-merged-gguf"
    folder.mkdir()
    (folder / "run-f16.gguf").write_bytes(b"")
    code, err = run_cli(monkeypatch, capsys, "generate", str(folder), "--prompt", "hi")
    assert code == 2 and err.endswith("(it holds run-f16.gguf: give the file)"), err


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_max_steps_below_one_is_refused_not_read_as_no_limit(steps, tmp_path, monkeypatch, capsys):
    # 0 was falsy all the way down (`max_steps or recipe...`): a full run of every epoch began.
    path = recipe(tmp_path, "", [GOOD_ROW] * 3)
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(tmp_path / "outputs"))
    (tmp_path / "data.jsonl").unlink()  # were the refusal missing, the run would stop here, not train for hours
    code, err = run_cli(monkeypatch, capsys, "train", str(path), "--max-steps", steps)
    assert code == 2 and err == f"error: --max-steps {steps}: expected a positive number of steps", err
    assert not (tmp_path / "outputs").exists()


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    path = recipe(tmp_path, "", [GOOD_ROW] * 3)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    code, err = run_cli(monkeypatch, capsys, "train", str(path), "--output-dir", str(afile))
    # The last line: the first test of a session to read the bundled model converts it, and says so.
    assert code == 2 and err.splitlines()[-1] == f"error: {afile}: is a file, not a run folder", err
    assert "Traceback" not in err
    assert afile.read_text() == "mine"


def test_a_relative_dataset_path_not_found_names_recipe_key_and_directory(tmp_path, monkeypatch, capsys):
    path = recipe(tmp_path, "", [GOOD_ROW] * 3)
    path.write_text(path.read_text().replace(str(tmp_path / "data.jsonl"), "datasets/pirate.jsonl"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(tmp_path / "outputs"))
    for command in ("train", "estimate"):  # estimate said "datasets/pirate.jsonl: dataset file not found"
        code, err = run_cli(monkeypatch, capsys, command, str(path))
        assert code == 2 and err == (f"error: {path}: dataset.path: datasets/pirate.jsonl not found (relative to "
                                     f"the current directory {elsewhere})"), (command, err)
    code, err = run_cli(monkeypatch, capsys, "train", str(path), "--set", "dataset.path=..")
    assert code == 2 and err == (f"error: --set dataset.path=..: .. is a folder, not a JSONL file (relative to "
                                 f"the current directory {elsewhere})"), err
    assert not (tmp_path / "outputs").exists()


def test_a_run_folder_in_use_says_so_before_any_advice_about_it(tmp_path, monkeypatch, capsys):
    """The folder's lock is checked first: "use --force" sent the user to a retry that was refused too."""
    from finetune.runlock import RunLock

    path = recipe(tmp_path, "", [GOOD_ROW] * 3)
    run = tmp_path / "outputs" / "demo"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 3}))
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(tmp_path / "outputs"))
    holder = RunLock(run)  # another train, training now
    holder.acquire(create=False)
    holder.mark()
    try:
        for extra in ([], ["--force"], ["--resume"]):
            code, err = run_cli(monkeypatch, capsys, "train", str(path), *extra)
            assert code == 2 and "Traceback" not in err, err
            assert "in use by another `finetune train` (pid " in err.splitlines()[-1] and "holds" not in err, err
        # The launcher of a multi-process run checks the folder once for every rank: the same line first.
        from finetune.errors import RunError
        from finetune.launch import _check_run_folder
        from finetune.recipe import load_recipe

        for extra in ([], ["--force"]):
            with pytest.raises(RunError, match=r"in use by another `finetune train` \(pid "):
                _check_run_folder(load_recipe(path), ["train", str(path), *extra])
    finally:
        holder.release()
    assert sorted(p.name for p in run.iterdir()) == ["summary.json"]


def test_data_check_counts_rows_and_turns_as_training_sees_them(tmp_path, monkeypatch, capsys):
    # Two user turns before one reply were counted multi-turn, and one row was "1 rows".
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "there"},
                                             {"role": "assistant", "content": "Arr!"}]}) + "\n")
    monkeypatch.setattr(sys, "argv", ["finetune", "data", "check", str(data)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code in (0, None)
    assert f"{data}: valid, format messages, 1 row (0 multi-turn)" in capsys.readouterr().out


@pytest.mark.parametrize("processes", ["0", "-1"])
def test_num_processes_below_one_is_refused(processes, tmp_path, monkeypatch, capsys):
    # Both trained one process, exit 0, as if the number meant something.
    path = recipe(tmp_path, "", [GOOD_ROW] * 3)
    monkeypatch.setenv("FINETUNE_OUTPUTS", str(tmp_path / "outputs"))
    (tmp_path / "data.jsonl").unlink()  # were the refusal missing, the run would stop here, not train
    code, err = run_cli(monkeypatch, capsys, "train", str(path), "--num-processes", processes)
    assert code == 2 and err == f"error: --num-processes {processes}: expected 1 or more processes", err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args, message", [
    (["--token", "abc"], "--token: expected at least 8 printable ASCII characters, no spaces"),
    (["--criterion", "vibe"], "--criterion vibe: expected one of style, quality"),
])
def test_arena_option_refusals_are_one_line(args, message, tmp_path, monkeypatch, capsys):
    # They were typer's five-line boxes.
    code, err = run_cli(monkeypatch, capsys, "arena", str(tmp_path), *args)
    assert code == 2 and err == f"error: {message}", err


def test_arena_on_a_runs_compare_folder_names_the_compares_in_it(tmp_path, monkeypatch, capsys):
    # outputs/<run>/compare holds one timestamped folder per compare; the arena said samples.jsonl was missing.
    from finetune.arena.fixture import write_compare_dir

    older = write_compare_dir(tmp_path / "compare" / "20261205-100000")
    newer = write_compare_dir(tmp_path / "compare" / "20261205-120000")
    os.utime(older / "samples.jsonl", (1, 1))
    code, err = run_cli(monkeypatch, capsys, "arena", str(tmp_path / "compare"))
    assert code == 2 and err == (f"error: {tmp_path / 'compare'}: a folder of 2 compare folder(s), not one; "
                                 f"name one of them (the newest: {newer})"), err
