"""`finetune runs [FOLDER...]`, `finetune show RUN` and `finetune recipe show`: what they list and refuse."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from finetune.cli import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["finetune", *args])
    monkeypatch.setenv("COLUMNS", "250")  # rich would wrap the table's cells on a narrow terminal
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err.strip()


def make_run(folder: Path, name: str, summary: dict | None, age_s: float = 0.0) -> Path:
    """A run folder as train leaves it: recipe.yaml, and summary.json unless it was killed."""
    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump({"name": name}))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps({"name": name, **summary}))
    stamp = folder.stat().st_mtime - age_s
    os.utime(folder, (stamp, stamp))
    return folder


DONE = {"status": "completed", "steps": 117, "train_loss": 1.23456, "wall_time_s": 288.0, "peak_memory_mb": 5065.0,
        "energy_wh": None, "cost": {"amount": 1.5, "currency": "JPY"}, "finished_at": "2026-12-01T03:04:05+09:00"}


def test_runs_lists_outputs_newest_first_and_killed_runs_too(monkeypatch, capsys):
    outputs = Path(os.environ["FINETUNE_OUTPUTS"])
    now = datetime.now().astimezone()  # runs are ordered by finished_at, a run without one by its folder's mtime
    make_run(outputs / "older", "older", {**DONE, "status": "time_budget", "steps": 40,
                                          "finished_at": (now - timedelta(hours=1)).isoformat(timespec="seconds")})
    make_run(outputs / "newer", "newer", {**DONE, "finished_at": now.isoformat(timespec="seconds")}, age_s=3600)
    make_run(outputs / "killed", "killed", None, age_s=60)
    (outputs / "not-a-run").mkdir()  # no recipe.yaml: some other folder
    code, out, _ = run_cli(monkeypatch, capsys, "runs")
    assert code == 0
    rows = [line for line in out.splitlines() if any(n in line for n in ("older", "newer", "killed"))]
    assert [next(n for n in ("older", "newer", "killed") if n in r) for r in rows] == ["newer", "killed", "older"]
    assert "completed" in rows[0] and "117" in rows[0] and "1.2346" in rows[0]
    assert now.strftime("%Y-%m-%d %H:%M") in rows[0]
    assert "no summary" in rows[1]
    assert "time_budget" in rows[2] and "not-a-run" not in out


def test_runs_takes_folders_of_runs_and_run_folders(tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    make_run(elsewhere / "a", "alpha", DONE)
    make_run(elsewhere / "b", "beta", {**DONE, "status": "interrupted"})
    single = make_run(tmp_path / "one-off", "gamma", {**DONE, "status": "diverged"})
    code, out, _ = run_cli(monkeypatch, capsys, "runs", str(elsewhere), str(single), str(single))
    assert code == 0
    for name, status in (("alpha", "completed"), ("beta", "interrupted"), ("gamma", "diverged")):
        line = next(line for line in out.splitlines() if name in line)
        assert status in line
    assert out.count("gamma") == 1, "a folder named twice is listed once"
    code, _, err = run_cli(monkeypatch, capsys, "runs", str(tmp_path / "nope"))
    assert code == 2 and err == f"error: {tmp_path / 'nope'}: no such folder"


def test_show_finds_a_run_by_name_or_folder_and_refuses_others(tmp_path, monkeypatch, capsys):
    outputs = Path(os.environ["FINETUNE_OUTPUTS"])
    run = make_run(outputs / "pirate", "pirate", DONE)
    (run / "adapter").mkdir()
    for ref in ("pirate", str(run)):
        code, out, _ = run_cli(monkeypatch, capsys, "show", ref)
        assert code == 0
        assert '"status": "completed"' in out and '"steps": 117' in out
        assert f"{run / 'adapter'}/" in out and str(run / "summary.json") in out
    killed = make_run(tmp_path / "killed", "killed", None)
    code, out, _ = run_cli(monkeypatch, capsys, "show", str(killed))
    assert code == 0 and "no summary.json (running, or killed before its first checkpoint)" in " ".join(out.split())
    # Killed after saving a checkpoint (it said "killed before the first save").
    (killed / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (killed / "checkpoints" / "checkpoint-10").mkdir()
    code, out, _ = run_cli(monkeypatch, capsys, "show", str(killed))
    assert "killed after saving checkpoint-10, which `finetune train RECIPE --resume` continues" in " ".join(
        out.split()), out
    code, _, err = run_cli(monkeypatch, capsys, "show", "no-such-run")
    assert code == 2 and err.startswith("error: no-such-run: no such run") and "\n" not in err
    # a folder that is there but is not a run is named for what it is, not "no such run"
    blend = outputs / "blend"
    blend.mkdir()
    (blend / "adapter_config.json").write_text("{}")
    code, _, err = run_cli(monkeypatch, capsys, "export", "blend")
    assert code == 2 and err == f"error: {blend}: an adapter folder (an export, or a merge-adapters output written " \
        "before 2026-12-05), not a run; `finetune chat` and `finetune generate` take it as it is", err


def test_recipe_show_prints_every_default_and_the_overrides(tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("name: demo\ndataset:\n  path: data.jsonl\n")
    code, out, _ = run_cli(monkeypatch, capsys, "recipe", "show", str(path), "--set", "training.max_steps=20",
                           "--set", "lora.r=8")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["training"]["max_steps"] == 20 and shown["lora"]["r"] == 8
    assert shown["lora"]["alpha"] == 32 and shown["quantization"]["bits"] == 4  # defaults filled in
    assert shown["base_model"] == "bundled:smollm2-135m-instruct" and shown["training"]["precision"] == "auto"
    code, _, err = run_cli(monkeypatch, capsys, "recipe", "show", str(path), "--set", "lora.rr=8")
    assert code == 2 and "lora.rr" in err and "did you mean 'r'" in err


def test_runs_says_when_a_folder_holds_no_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "x.yaml").write_text("name: x\n")
    code, out, err = run_cli(monkeypatch, capsys, "runs", str(tmp_path / "recipes"))
    assert code == 0 and out.strip() == f"no runs in {tmp_path / 'recipes'}" and not err, out
    code, out, _ = run_cli(monkeypatch, capsys, "runs")  # outputs/ not made yet
    assert code == 0 and out.strip() == f"no runs in {os.environ['FINETUNE_OUTPUTS']}", out


def test_runs_are_ordered_by_when_they_finished_not_by_folder_mtime(tmp_path, monkeypatch, capsys):
    """A file written into an old run later (an export, a compare) moved it to the top of the list."""
    make_run(tmp_path / "old", "old", {**DONE, "finished_at": "2026-11-01T03:00:00+09:00"})  # touched just now
    make_run(tmp_path / "new", "new", {**DONE, "finished_at": "2026-12-01T03:00:00+09:00"}, age_s=3600)
    make_run(tmp_path / "mid", "mid", {"status": "interrupted", "started_at": "2026-11-15T03:00:00+09:00"},
             age_s=7200)
    make_run(tmp_path / "killed", "killed", None, age_s=10**9)  # no summary: its mtime, 30 years ago
    code, out, _ = run_cli(monkeypatch, capsys, "runs", str(tmp_path))
    names = [line.split()[1] for line in out.splitlines() if line.split()[1:2] and line.split()[1] in
             ("old", "new", "mid", "killed")]
    assert code == 0 and names == ["new", "mid", "old", "killed"], out


def test_runs_names_an_unreadable_summary(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "cut", "cut", None)
    (run / "summary.json").write_text('{"name": "cut", "status": "compl')
    listed = make_run(tmp_path / "list", "list", None)
    (listed / "summary.json").write_text("[1, 2]")
    code, out, _ = run_cli(monkeypatch, capsys, "runs", str(tmp_path))
    rows = [line for line in out.splitlines() if " cut " in line or " list " in line]
    assert code == 0 and len(rows) == 2 and all("unreadable summary.json" in r for r in rows), out
    assert "running or killed" not in out


def test_recipe_show_of_a_folder_says_it_is_a_folder(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "recipe", "show", str(tmp_path))
    assert code == 2 and err == f"error: {tmp_path}: a folder, not a recipe file (name one of its .yaml files)", err


def test_runs_names_each_run_as_show_takes_it(monkeypatch, capsys):
    # A run trained with --output-dir outputs/run1 was listed by its recipe's name, which show refused.
    outputs = Path(os.environ["FINETUNE_OUTPUTS"])
    make_run(outputs / "run1", "pirate", DONE)
    code, out, _ = run_cli(monkeypatch, capsys, "runs")
    row = next(line for line in out.splitlines() if "completed" in line)
    assert code == 0 and row.split()[1:4] == ["run1", "│", "pirate"], out
    code, out, err = run_cli(monkeypatch, capsys, "show", row.split()[1])
    assert code == 0 and not err, err


@pytest.mark.parametrize("target", ["outputs/typo", "./typo", "typo/run/adapter", "missing.gguf"])
def test_generate_names_a_missing_path_instead_of_asking_the_hub(tmp_path, monkeypatch, capsys, target):
    # `outputs/typo` looked like a hub id 'org/name': the answer was "couldn't connect to huggingface.co".
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "generate", target, "--prompt", "hi")
    assert code == 2 and err.startswith(f"error: {target}: no such file or folder"), err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_show_names_the_adapter_where_a_copied_run_is_now(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "copy", "pirate", {**DONE, "adapter": "/home/someone/outputs/pirate/adapter"})
    (run / "adapter").mkdir()
    code, out, _ = run_cli(monkeypatch, capsys, "show", str(run))
    assert code == 0 and f'"adapter": "{(run / "adapter").resolve()}"' in out, out
    assert "/home/someone" not in out


def test_a_hub_id_is_not_taken_for_a_path_by_a_folder_named_like_its_org(tmp_path, monkeypatch):
    from finetune.chat import _looks_like_a_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Qwen").mkdir()  # a download's --local-dir
    (tmp_path / "outputs").mkdir()
    assert not _looks_like_a_path("Qwen/Qwen2.5-7B-Instruct") and not _looks_like_a_path("bundled:smollm2")
    assert _looks_like_a_path("outputs/typo") and _looks_like_a_path("~/models/m")


def test_a_home_relative_folder_is_found(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "m").mkdir(parents=True)  # there, but not a model: named as what it is
    code, _, err = run_cli(monkeypatch, capsys, "generate", "~/models/m", "--prompt", "hi")
    assert code == 2 and "no such file or folder" not in err and "needs a config.json" in err, err
