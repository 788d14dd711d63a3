"""Two real processes on the CPU (gloo) through accelerate's launcher: results, signals and resume.

Every run here is a real `finetune train` subprocess on a tiny random Llama (2 layers, hidden 64)
with the bundled model's tokenizer, so a run costs seconds on two cores, mostly imports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
TIMEOUT = 300
# Sampling: `group_by_length` builds mega-batches of 50 x the per-device batch, so 1 x 4 and 2 x 2 would
# see the rows in different orders. Random sampling with the same data_seed gives one permutation on
# every rank, and accelerate hands batch k of it to rank k % N, so the 2 x 2 global batch of a step
# holds exactly the rows of the 1 x 4 batch. Dropout 0 keeps the ranks' random streams out of it.
RECIPE = """\
name: tiny-dist
base_model: {model}
dataset: {{path: {data}, eval_fraction: 0.0, max_length: 64}}
quantization: {{bits: null}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training:
  max_steps: {steps}
  batch_size: {batch}
  logging_steps: 1
  save_steps: 10
  precision: fp32
  gradient_checkpointing: false
  group_by_length: false
  warmup_ratio: 0.0
tracking: none
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny random Llama, a 40-row dataset and recipes for 1 x 4 and 2 x 2 batches."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from finetune.models import bundled_model_path

    root = tmp_path_factory.mktemp("dist")
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path("smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}. " * (1 + i % 4)}]}
        for i in range(40)
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, batch, steps in (("one.yaml", 4, 3), ("two.yaml", 2, 3), ("long.yaml", 2, 30)):
        text = RECIPE.format(model=root / "model", data=root / "data.jsonl", batch=batch, steps=steps)
        (root / name).write_text(text)
    return root


def _finetune(*args: str | Path, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "finetune", *map(str, args)], capture_output=True, text=True, env=env,
        timeout=TIMEOUT, cwd=ROOT,
    )


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a run folder: ranks and launchers carry it)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(proc.info["cmdline"] or []):
                found.append(proc.info["pid"])
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="module")
def one_process(tiny: Path) -> Path:
    """The single-process reference run: batch 4, no accumulation."""
    run = tiny / "run-one"
    # One thread: two threads spin-waiting on two shared cores stall when other jobs run.
    done = _finetune("train", tiny / "one.yaml", "--output-dir", run, env={**ENV, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def _assert_same_first_steps(one: Path, two: Path) -> None:
    first, second = _metrics(one), _metrics(two)
    # Same rows, same weights: the step-1 loss is the same number; after one averaged update, step 2
    # differs only by the order of floating-point sums.
    assert second[0]["step"] == first[0]["step"] == 1
    assert second[0]["loss"] == pytest.approx(first[0]["loss"], abs=1e-4)
    assert second[1]["loss"] == pytest.approx(first[1]["loss"], abs=1e-3)
    assert second[0]["tokens"] == first[0]["tokens"]  # tokens are counted over both ranks


def test_two_processes_train_like_one_with_the_same_global_batch(tiny: Path, one_process: Path) -> None:
    run = tiny / "run-two"
    done = _finetune("train", tiny / "two.yaml", "--num-processes", "2", "--output-dir", run)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(run)
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["num_processes"] == 2 and summary["strategy"] == "ddp"
    assert "global batch 2x1x2=4" in done.stdout
    # Only the main process writes: one adapter, one summary, one metrics line per step.
    assert sorted(p.name for p in run.iterdir() if "adapter" in p.name) == ["adapter"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3]
    assert summary["peak_memory_mb"] > 0
    _assert_same_first_steps(one_process, run)


def test_sigterm_stops_every_rank_and_resume_finishes(tiny: Path) -> None:
    run = tiny / "run-signal"
    command = [sys.executable, "-m", "finetune", "train", str(tiny / "long.yaml"), "--num-processes", "2",
               "--output-dir", str(run)]
    with open(tiny / "signal.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
        deadline = time.monotonic() + TIMEOUT
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None, (tiny / "signal.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no training step within the time limit"
            time.sleep(0.1)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len([p for p in family if "finetune" in " ".join(p.cmdline())]) >= 3  # launcher + 2 ranks
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=TIMEOUT)
    output = (tiny / "signal.log").read_text()
    assert code == 130, output[-3000:]
    # A stop the ranks handled as asked reads as in one process: one signal line, the status line, no
    # traceback (accelerate's launcher, signalled itself, ended in one) and no torchelastic shutdown warnings.
    assert "Traceback" not in output and "death signal" not in output, output[-3000:]
    assert output.count("finishing this step, then saving") == 1, output[-3000:]
    assert "status interrupted" in output, output[-3000:]
    assert not [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not _processes_mentioning(str(run))
    summary = _summary(run)
    assert summary["status"] == "interrupted" and summary["num_processes"] == 2
    assert 1 <= summary["steps"] < 30
    assert (run / "checkpoints" / f"checkpoint-{summary['steps']}").is_dir()

    done = _finetune("train", tiny / "long.yaml", "--num-processes", "2", "--output-dir", run, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(run)
    assert summary["status"] == "completed" and summary["steps"] == summary["max_steps"] == 30
    assert [r["step"] for r in _metrics(run) if r.get("loss") is not None] == list(range(1, 31))
    assert not _processes_mentioning(str(run))


def test_explicit_accelerate_launch_behaves_the_same(tiny: Path, one_process: Path) -> None:
    run = tiny / "run-explicit"
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/ddp.yaml",
         "--num_processes", "2", "--main_process_port", "0",
         "-m", "finetune", "train", str(tiny / "two.yaml"), "--output-dir", str(run)],
        capture_output=True, text=True, env=ENV, timeout=TIMEOUT, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(run)
    assert summary["status"] == "completed" and summary["num_processes"] == 2
    _assert_same_first_steps(one_process, run)


def test_impossible_launches_fail_in_one_line_before_any_process(tiny: Path, one_process: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        run = tiny / "run-fsdp"
        done = _finetune("train", tiny / "two.yaml", "--set", "distributed.strategy=fsdp",
                         "--num-processes", "2", "--output-dir", run)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"error: {tiny / 'two.yaml'}: distributed.strategy: fsdp needs CUDA GPUs (accelerate runs it on "
            "GPUs only); on a CPU use ddp"
        ]
        assert not run.exists()
    # A finished run is never overwritten without --force: refused by the launcher, not by each rank.
    done = _finetune("train", tiny / "two.yaml", "--num-processes", "2", "--output-dir", one_process)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--force" in done.stderr
    assert _summary(one_process)["num_processes"] == 1


def test_a_packed_run_with_fewer_batches_than_rounds_of_ranks_trains_on_two(tiny: Path) -> None:
    """11 rows in packed batches of an 8-row budget: 2 batches an epoch, one per rank. The ranks disagreed
    on the steps of an epoch (accelerate read the packed sampler's batch size as every batch's row count) and
    waited for each other for ever, deaf to Ctrl-C."""
    rows = (tiny / "data.jsonl").read_text().splitlines()[:11]
    (tiny / "eleven.jsonl").write_text("\n".join(rows) + "\n")
    text = RECIPE.format(model=tiny / "model", data=tiny / "eleven.jsonl", batch=8, steps=3)
    (tiny / "packed.yaml").write_text(text.replace("  group_by_length: false\n", "  packing: true\n"))
    run = tiny / "run-packed"
    done = _finetune("train", tiny / "packed.yaml", "--num-processes", "2", "--output-dir", run)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = _summary(run)
    assert summary["status"] == "completed" and summary["steps"] == 3 and summary["packing"]["enabled"], summary
