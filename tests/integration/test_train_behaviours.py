"""Training behaviours that had no test: gradient accumulation, save_minutes, the estimate's refusal, exit
codes per status, and every architecture and quantisation path learning something real."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

from finetune.errors import RunError
from finetune.recipe import parse_recipe
from finetune.train import train
from tests.conftest import make_tiny_model, recipe_dict

pytestmark = pytest.mark.slow


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def step_records(run: Path) -> list[dict]:
    return [r for r in records(run) if r.get("loss") is not None]


def lora_b_norm(adapter: Path) -> float:
    from safetensors.torch import load_file

    weights = load_file(adapter / "adapter_model.safetensors")
    b = [t.float() for k, t in weights.items() if "lora_B" in k]
    assert b, sorted(weights)[:5]
    assert all(torch.isfinite(t).all() for t in weights.values())
    return float(sum(t.norm() ** 2 for t in b) ** 0.5)


def learning_spec(model: Path, data: Path, steps: int = 10, **training) -> dict:
    """Long enough, with a high constant rate, for a random tiny model's loss to fall clearly."""
    spec = recipe_dict(str(model), data, max_steps=steps, learning_rate=1e-2, lr_scheduler="constant",
                       warmup_ratio=0.0, **training)
    spec["dataset"]["eval_fraction"] = 0.0
    return spec


def assert_learned(run: Path, summary: dict, steps: int) -> None:
    """Finite losses at every step, falling, and a LoRA B that moved away from its zero start."""
    assert summary["status"] == "completed" and summary["steps"] == steps, summary
    losses = [r["loss"] for r in step_records(run)]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.05, f"loss did not fall: first three {first:.3f}, last three {last:.3f}"
    assert lora_b_norm(run / "adapter") > 1e-3, "LoRA B is still zero: the adapter learned nothing"


ARCHITECTURES = ["llama", "mistral", "qwen2", "gemma2", "phi3", "gpt2", "gpt_neox", "gpt_neox_japanese"]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_each_architecture_learns(model_type, bundled_dir, pirate_rows, tmp_path):
    folder = make_tiny_model(tmp_path / model_type, model_type, bundled_dir)
    # One batch of the same 4 rows at every step: the loss then falls for a model that learns, whatever the
    # rows say (on 10 different batches of 2 the batch-to-batch spread was as large as the fall: phi3 failed
    # when the pirate data was regenerated, 10.751 -> 10.701).
    rows = tmp_path / "rows4.jsonl"
    rows.write_text("".join(pirate_rows.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")
    summary = train(parse_recipe(learning_spec(folder, rows, batch_size=4)), output_dir=tmp_path / "run",
                    say=lambda *_: None)
    assert_learned(tmp_path / "run", summary, 10)
    config = json.loads((tmp_path / "run/adapter/adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["target_modules"]


@pytest.mark.parametrize(
    ("quantization", "layer"),
    [({"bits": 4, "quant_type": "nf4", "double_quant": True}, "Linear4bit"),
     ({"bits": 4, "quant_type": "fp4", "double_quant": False}, "Linear4bit"),
     ({"bits": 8}, "Linear8bitLt")],
)
def test_quantised_bases_learn_on_this_machine(quantization, layer, tiny_llama, pirate_rows, tmp_path):
    import bitsandbytes as bnb
    from transformers import TrainerCallback

    seen: list[object] = []

    class Inspect(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            seen.extend(m for m in model.modules() if isinstance(m, getattr(bnb.nn, layer)))

    spec = learning_spec(tiny_llama, pirate_rows, batch_size=2)
    spec["quantization"] = quantization
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", callbacks=[Inspect()], say=lambda *_: None)
    assert summary["quantization"] == quantization["bits"]
    assert seen, f"the base linears must be bitsandbytes {layer}"
    if quantization["bits"] == 4:
        assert seen[0].weight.quant_type == quantization["quant_type"]
    assert_learned(tmp_path / "run", summary, 10)


def test_fp16_precision_trains_or_refuses_in_one_line(tiny_llama, pirate_rows, tmp_path):
    spec = learning_spec(tiny_llama, pirate_rows, steps=6, batch_size=2, precision="fp16")
    try:
        summary = train(parse_recipe(spec), output_dir=tmp_path / "run", say=lambda *_: None)
    except RunError as exc:  # a CPU without fp16 autocast support must say so, not crash mid-run
        assert "fp16" in str(exc) and "\n" not in str(exc)
        assert not (tmp_path / "run/checkpoints").exists()
        return
    assert summary["precision"] == "fp16"
    assert all(math.isfinite(r["loss"]) for r in step_records(tmp_path / "run"))
    assert lora_b_norm(tmp_path / "run/adapter") > 1e-3


def test_gradient_accumulation_1x4_equals_4x1(tiny_llama, pirate_rows, tmp_path):
    from transformers import TrainerCallback

    grads: dict[str, list[dict[str, torch.Tensor]]] = {}

    def capture(label: str) -> TrainerCallback:
        class Grads(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                grads.setdefault(label, []).append(
                    {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None})

        return Grads()

    runs = {}
    for label, (batch, accumulation) in {"4x1": (4, 1), "1x4": (1, 4)}.items():
        spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=3, batch_size=batch,
                           gradient_accumulation=accumulation, precision="fp32", group_by_length=False,
                           lr_scheduler="constant", warmup_ratio=0.0)
        spec["dataset"]["eval_fraction"] = 0.0
        runs[label] = tmp_path / label
        train(parse_recipe(spec), output_dir=runs[label], callbacks=[capture(label)], say=lambda *_: None)
    wide, accumulated = step_records(runs["4x1"]), step_records(runs["1x4"])
    assert [r["step"] for r in wide] == [r["step"] for r in accumulated] == [1, 2, 3]
    for a, b in zip(wide, accumulated, strict=True):
        # The loss is per labelled token over the whole optimizer step, however the step is split.
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (a, b)
        assert a["tokens"] == b["tokens"]
    assert len(grads["4x1"]) == len(grads["1x4"]) == 3
    for g_wide, g_acc in zip(grads["4x1"], grads["1x4"], strict=True):
        assert g_wide.keys() == g_acc.keys() and g_wide
        for name in g_wide:
            assert torch.allclose(g_wide[name], g_acc[name], rtol=1e-3, atol=1e-6), name


def test_save_minutes_writes_checkpoints_between_save_steps(tiny_llama, pirate_rows, tmp_path):
    from transformers import TrainerCallback

    class Slow(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            # Each step now takes longer than save_minutes. Sleeping at the step's start puts the delay between
            # one save and the next check whatever the machine's speed (at the step's end it would run after
            # the check, so fast steps skip every other save and slow ones do not).
            time.sleep(0.8)

    spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=4, save_steps=1000, save_minutes=0.01,
                       save_total_limit=10)
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", callbacks=[Slow()], say=lambda *_: None)
    assert summary["status"] == "completed"
    saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run/checkpoints").glob("checkpoint-*"))
    assert saved[:3] == [1, 2, 3], f"a checkpoint every 0.6 s of 0.8 s steps: {saved}"

    spec["training"]["save_minutes"] = 60  # not due within the run: only the end saves
    train(parse_recipe(spec), output_dir=tmp_path / "hour", callbacks=[Slow()], say=lambda *_: None)
    assert [p.name for p in (tmp_path / "hour/checkpoints").glob("checkpoint-*")] in ([], ["checkpoint-4"])


def test_the_estimate_refuses_a_run_that_does_not_fit_unless_forced(tiny_llama, pirate_rows, tmp_path, monkeypatch):
    import psutil

    real = psutil.virtual_memory()
    # This machine, seen with 1 MiB of free RAM: no model fits.
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=2**20))
    spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=2)
    said: list[str] = []
    with pytest.raises(RunError) as info:
        train(parse_recipe(spec), output_dir=tmp_path / "run", say=said.append)
    message = str(info.value)
    assert "does not fit" in message and "--force" in message and "\n" not in message
    assert not (tmp_path / "run").exists(), "a refused run writes nothing"
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", force=True, say=said.append)
    assert summary["status"] == "completed" and any("does NOT fit" in line for line in said)


def cli_train(monkeypatch, capsys, recipe: Path, *args: str) -> tuple[int, str]:
    from finetune.cli import main

    monkeypatch.setattr(sys, "argv", ["finetune", "train", str(recipe), *args])
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr()
    return info.value.code or 0, out.out + out.err


def test_exit_codes_per_status(tiny_llama, pirate_rows, tmp_path, monkeypatch, capsys):
    import yaml
    from transformers import TrainerCallback

    import finetune.train as train_module

    def recipe(name: str, **training) -> Path:
        spec = recipe_dict(str(tiny_llama), pirate_rows, **{"max_steps": 3, **training})
        spec["name"] = name
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    code, out = cli_train(monkeypatch, capsys, recipe("ok"), "--output-dir", str(tmp_path / "ok"))
    assert code == 0 and "status completed" in out, out
    code, out = cli_train(monkeypatch, capsys, recipe("budget", max_steps=100000, max_time="3s"),
                          "--output-dir", str(tmp_path / "budget"))
    assert code == 0 and "status time_budget" in out, out
    code, out = cli_train(monkeypatch, capsys, recipe("ok"), "--output-dir", str(tmp_path / "ok"))
    assert code == 2 and "--force" in out and "Traceback" not in out, "bad input: exit 2, one line"

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("injected failure at step 2")

    real_train = train_module.train

    def inject(callback: TrainerCallback) -> None:
        monkeypatch.setattr(train_module, "train", lambda *a, **k: real_train(*a, callbacks=[callback], **k))

    inject(Poison())
    code, out = cli_train(monkeypatch, capsys, recipe("nan", max_steps=20), "--output-dir", str(tmp_path / "nan"))
    assert code == 3 and "status diverged" in out, out
    assert json.loads((tmp_path / "nan/summary.json").read_text())["status"] == "diverged"
    inject(Crash())
    # An unexpected error is re-raised after the summary is written: Python prints it and exits 1.
    with pytest.raises(RuntimeError, match="injected failure"):
        cli_train(monkeypatch, capsys, recipe("crash", max_steps=20), "--output-dir", str(tmp_path / "crash"))
    summary = json.loads((tmp_path / "crash/summary.json").read_text())
    assert summary["status"] == "failed" and "injected failure" in summary["message"]
    from finetune.runs import STATUS_EXIT

    assert STATUS_EXIT == {"completed": 0, "time_budget": 0, "interrupted": 130, "diverged": 3, "failed": 1}

    class OutOfMemory(TrainerCallback):  # what CUDA raises when a step asks for more than the card has
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    # Out of memory is the recipe asking too much: one line saying what to change, not a traceback.
    inject(OutOfMemory())
    code, out = cli_train(monkeypatch, capsys, recipe("oom", max_steps=20, save_steps=1),
                          "--output-dir", str(tmp_path / "oom"))
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in out and len(lines) == 1, out
    assert "out of memory at step 2; lower training.batch_size" in lines[0] and "--resume" in lines[0], lines
    summary = json.loads((tmp_path / "oom/summary.json").read_text())
    assert summary["status"] == "failed" and "lower training.batch_size" in summary["message"]


def test_rows_max_length_cuts_to_no_reply_are_named_and_not_counted(tiny_llama, tmp_path):
    """A row whose user turn fills max_length has no label left: training drops it, says which line it was,
    and summary.json's examples count the rows trained on, not the rows read."""
    rows = [{"messages": [{"role": "user", "content": ("word " * 120) if i % 4 == 0 else f"Question {i}?"},
                          {"role": "assistant", "content": f"Arr, answer {i}."}]} for i in range(12)]
    data = tmp_path / "cut.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = recipe_dict(str(tiny_llama), data, max_steps=1)
    spec["dataset"]["eval_fraction"] = 0.0
    said: list[str] = []
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", say=said.append)
    dropped = [line for line in said if "rows dropped" in line]
    assert dropped == ["data: 3 of 12 training rows dropped: dataset.max_length=64 cuts off every reply "
                       "(lines 1, 5, 9); raise max_length to keep them"], said
    assert summary["examples"] == {"train": 9, "eval": 0}, summary["examples"]


def test_a_dataset_with_no_reply_left_is_refused_before_training(tiny_llama, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "word " * 120}, {"role": "assistant", "content": "Arr."}]}] * 4
    data = tmp_path / "cut.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = recipe_dict(str(tiny_llama), data, max_steps=1)
    from finetune.errors import DataError

    with pytest.raises(DataError, match="max_length"):
        train(parse_recipe(spec), output_dir=tmp_path / "run", say=lambda *_: None)
    assert not (tmp_path / "run" / "summary.json").exists()
