"""The estimator against this machine: real training steps of the bundled model, measured.

Three checks, none mocked:
- activations: what PyTorch really saves for backward in a transformers + peft model (counted with
  saved-tensor hooks) against the estimator's per-layer formula;
- peak memory: four configurations of the bundled SmolLM2-135M (16-bit and 4-bit, 64 and 128 tokens,
  LoRA r 8 and 16) trained for a few steps by finetune.train.run_probe; on a CPU the measurement is the
  process's peak RSS, so the prediction includes the process baseline (Python and the libraries, about
  0.6 GB), malloc's fragmentation and, for 4-bit, the peak while quantising (see docs/estimate.md);
- speed: the utilisation calibrated on one configuration predicts another's seconds per step.

Each probe runs in its own process: peak RSS is a high-water mark over a process's whole life.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune import catalog as cat
from finetune import estimate as E

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "pirate-smollm2.yaml"

# Few steps, short sequences, no held-out evaluation: the whole file stays within a few minutes on an idle
# 2-core machine.
COMMON = ["dataset.eval_fraction=0.0", "training.batch_size=2",
          "training.gradient_accumulation=1"]
CONFIGS = {
    "16bit-64-r8": ["quantization.bits=null", "dataset.max_length=64", "lora.r=8"],
    "16bit-128-r16": ["quantization.bits=null", "dataset.max_length=128", "lora.r=16"],
    "4bit-64-r16": ["quantization.bits=4", "dataset.max_length=64", "lora.r=16"],
    "4bit-128-r8": ["quantization.bits=4", "dataset.max_length=128", "lora.r=8"],
}
PROBE = """
import json, sys
from finetune.recipe import load_recipe
from finetune.train import run_probe
recipe = load_recipe(sys.argv[1], sys.argv[2:])
print("PROBE " + json.dumps(run_probe(recipe, steps=4)))
"""
# Step times on a shared machine jump when other work arrives: the speed check times its two
# configurations alternately in one process, twice, and keeps each one's faster run.
ALTERNATE = """
import json, sys
from finetune.recipe import load_recipe
from finetune.train import run_probe
common, first, second = json.loads(sys.argv[2])
recipes = [load_recipe(sys.argv[1], common + first), load_recipe(sys.argv[1], common + second)]
runs = [[], []]
for _ in range(2):
    for index, recipe in enumerate(recipes):
        runs[index].append(run_probe(recipe, steps=4))
best = [min(r, key=lambda m: m["seconds_per_step"]) for r in runs]
print("PROBE " + json.dumps(best))
"""


def _recipe(name: str):
    from finetune.recipe import load_recipe

    return load_recipe(RECIPE, COMMON + CONFIGS[name])


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Run the four probes, one fresh process each (after converting the bundled model once, here)."""
    from finetune.models import bundled_model_path

    bundled_model_path("smollm2-135m-instruct")  # its one-off conversion must not land in a probe's peak
    results = {}
    for name, overrides in CONFIGS.items():
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(RECIPE), *COMMON, *overrides],
            cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "WANDB_MODE": "disabled"},
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
        assert done.returncode == 0 and lines, f"probe {name} failed:\n{done.stderr[-3000:]}"
        results[name] = json.loads(lines[-1][len("PROBE "):])
    return results


def _predict(name: str, measured: dict) -> dict:
    recipe = _recipe(name)
    a = E.assumptions()
    shape = E.model_shape(recipe.base_model)
    device = E.this_machine(cat.load_gpus(), a)
    tokens = E.count_tokens(recipe, None, a)
    util = a.utilisation if device.kind == "cuda" else a.cpu_utilisation
    return E.predicted_step(recipe, shape, device, measured, tokens, util, a)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_predicted_peak_memory_within_15_percent(measured, name):
    probe = measured[name]
    predicted = _predict(name, probe)["peak_memory_mb"]
    actual = probe["peak_memory_mb"]
    message = f"{name}: predicted {predicted:.0f} MB, measured {actual:.0f} MB ({predicted / actual - 1:+.1%})"
    print(message)  # the figures behind docs/estimate.md's table (pytest -s shows them)
    # 15%, QLoRA too. Its probes' peaks (quantising while loading) once ranged from 1,197 to 1,749 MB for one
    # configuration and failed a 15% and then a 20% check; with each weight's 16-bit copy given back whole and
    # the fp32 weights copied out of the mapped checkpoint (finetune/allocator.py, models.py) they measured
    # 1,189-1,220 MB in bf16 and 1,245 MB in fp32, against 1,234 and 1,288 predicted (2026-12-03).
    assert predicted == pytest.approx(actual, rel=0.15), message


@pytest.fixture(scope="module")
def timed() -> tuple[dict, dict]:
    """Seconds per step of the two 16-bit configurations, timed alternately (see ALTERNATE)."""
    from finetune.models import bundled_model_path

    bundled_model_path("smollm2-135m-instruct")
    # Step times on a machine already running more work than it has cores measure the neighbours: seen
    # here, the same two configurations timed 1.4x and 3.1x apart under a load of 6 on 2 cores.
    # Timings are benchmarks, not behaviour (STYLE.md): this check runs when asked for, on a quiet machine.
    if os.environ.get("FINETUNE_TIMING_TESTS") != "1":
        pytest.skip("timing check: set FINETUNE_TIMING_TESTS=1 on an otherwise idle machine")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 1.5 * cores:
        pytest.skip(f"machine busy (load {load:.1f} on {cores} cores): step times would not be ours")
    spec = json.dumps([COMMON, CONFIGS["16bit-64-r8"], CONFIGS["16bit-128-r16"]])
    done = subprocess.run([sys.executable, "-c", ALTERNATE, str(RECIPE), spec], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "WANDB_MODE": "disabled"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, f"timing probes failed:\n{done.stderr[-3000:]}"
    first, second = json.loads(lines[-1][len("PROBE "):])
    return first, second


@pytest.mark.slow
def test_calibrated_speed_predicts_another_configuration(timed):
    # Calibrate on the short 16-bit run, predict the long one (about twice the tokens per step).
    base, other = timed
    factor = E.speed_factor(_predict("16bit-64-r8", base)["seconds_per_step"], base["seconds_per_step"])
    uncalibrated = _predict("16bit-128-r16", other)["seconds_per_step"]
    predicted = uncalibrated * factor
    message = (
        f"predicted {predicted:.3f} s/step (uncalibrated {uncalibrated:.3f}), measured "
        f"{other['seconds_per_step']:.3f} s/step (first configuration {base['seconds_per_step']:.3f} s/step, "
        f"speed factor {factor:.3f})"
    )
    print(message)
    assert predicted == pytest.approx(other["seconds_per_step"], rel=0.25), message


# --- activations: the formula against what autograd saves ------------------------------------------


def _saved_bytes(model, inputs: dict, autocast: bool) -> int:
    """Bytes of unique storages autograd saves for backward in one forward pass (parameters excluded)."""
    import torch

    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(**inputs)
            logits = out.logits.float()
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), inputs["input_ids"].flatten())
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


# Modes: fp32 (a CPU without fast bf16); bf16 and 4bit as finetune.train builds them on a bf16-capable CPU
# (every frozen weight bf16, LoRA inputs not upcast, matmul attention up to 160 tokens: 96 and 200 cover both
# kernels); cuda-bf16 as on a GPU (bf16 weights, autocast, peft upcasting LoRA inputs), emulated on the CPU.
@pytest.mark.parametrize("mode, dropout, seq", [
    ("fp32", 0.0, 96), ("fp32", 0.05, 96), ("bf16", 0.0, 96), ("bf16", 0.05, 96), ("bf16", 0.05, 200),
    ("4bit", 0.05, 96), ("4bit", 0.0, 200), ("cuda-bf16", 0.0, 96), ("cuda-bf16", 0.05, 200),
])
def test_activation_formula_matches_saved_tensors(tmp_path, mode, dropout, seq):
    # The bundled model's architecture (random weights: saved sizes do not depend on values), LoRA on
    # all linear layers, built with finetune.train's own helpers where it has them.
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from peft.helpers import disable_input_dtype_casting
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from finetune.train import keep_frozen_weights_in_bf16
    from finetune.trainer import attention_kernels

    entry = cat.find_model("bundled:smollm2-135m-instruct", cat.load_models())[1]
    config = E.config_from_catalogue(entry)
    config.num_hidden_layers = 4  # the per-layer formula does not care how many layers there are
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if mode == "fp32" else torch.bfloat16)
    if mode == "4bit":
        model.save_pretrained(tmp_path)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map={"": "cpu"})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    cpu_bf16 = mode in ("bf16", "4bit")
    if cpu_bf16:
        keep_frozen_weights_in_bf16(model)
    model.train()
    batch = 2
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    mask = torch.ones_like(ids)
    mask[0, seq // 2:] = 0  # padding, as in real batches (it makes SDPA repeat k and v for GQA)
    # As train's compute_loss: peft's LoRA inputs stay bf16 on a bf16 CPU (its public casting switch).
    with attention_kernels(cpu_bf16, seq, checkpointing=False), disable_input_dtype_casting(model, active=cpu_bf16):
        saved = _saved_bytes(model, {"input_ids": ids, "attention_mask": mask}, autocast=mode != "fp32")
    shape = E.shape_from_config(config, "smollm2-4-layers")
    setup = E.Setup(bits=4 if mode == "4bit" else None, precision="fp32" if mode == "fp32" else "bf16",
                    device="cuda" if mode == "cuda-bf16" else "cpu", lora_r=8, lora_dropout=dropout, batch=batch,
                    seq=seq, checkpointing=False)
    a = E.assumptions()
    predicted = E.activations(shape, setup, a, checkpointing=False)
    predicted += batch * seq * shape.vocab * 4  # cross-entropy's saved fp32 log-softmax (part of logits_gb)
    message = f"predicted {predicted / 2**20:.1f} MiB, saved {saved / 2**20:.1f} MiB"
    assert predicted == pytest.approx(saved, rel=0.10), message


@pytest.mark.slow
def test_probe_through_the_cli_calibrates_later_estimates(bundled_dir, tmp_path):
    """`finetune estimate --probe` runs real steps, stores its speed factor, and the next estimate uses it."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / bundled_dir.name).symlink_to(bundled_dir)  # no second conversion
    for name in ("hardware.json",):
        if (bundled_dir.parent.parent / name).exists():
            (home / name).write_bytes((bundled_dir.parent.parent / name).read_bytes())
    env = {**os.environ, "FINETUNE_HOME": str(home), "WANDB_MODE": "disabled"}
    args = [sys.executable, "-m", "finetune", "estimate", str(RECIPE), "--json",
            "--set", "dataset.max_length=64", "--set", "training.batch_size=2"]

    def run(*extra: str) -> dict:
        done = subprocess.run([*args, *extra], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    probed = run("--probe")
    probe = probed["probe"]
    assert probe["measured"]["seconds_per_step"] > 0 and probe["measured"]["peak_memory_mb"] > 0
    assert probe["speed_factor"] > 0 and probed["calibration"]["speed_factor"] == round(probe["speed_factor"], 4)
    mine = next(g for g in probed["gpus"] if g["this_machine"])
    later = run()
    assert later["probe"] is None and later["calibration"] == probed["calibration"]
    again = next(g for g in later["gpus"] if g["this_machine"])
    assert again["hours"] == pytest.approx(mine["hours"], rel=1e-6)
