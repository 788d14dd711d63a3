"""A row's limits and suggestions as training would run them: checkpointing under `auto`, packed batches (lines,
not rows), the recipe's effective batch, a CPU's memory; and the words the table prints around them.

The real estimator, catalogue and shipped recipes (Llama 3.1 8B and Qwen2.5 7B are built on the meta device,
their datasets counted by characters); nothing here loads weights or trains.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from finetune import catalog as cat
from finetune import estimate as E
from finetune.estimate.assumptions import Assumptions
from finetune.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def a() -> Assumptions:
    return E.assumptions()


@pytest.fixture
def shipped(monkeypatch):
    """A shipped recipe by file name, with `--set` overrides; its dataset read from the repository root."""
    monkeypatch.chdir(ROOT)
    return lambda name, *overrides: load_recipe(ROOT / "recipes" / name, list(overrides))


def _recipe(tmp_path: Path, base_model: str, **sections: str):
    text = (f"name: limits-test\nbase_model: {base_model}\n"
            f"dataset: {{path: {ROOT / 'datasets' / 'pirate.jsonl'}, max_length: 512}}\n"
            + "".join(f"{k}: {v}\n" for k, v in sections.items()))
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return load_recipe(path)


def _card(name: str, a: Assumptions) -> E.Device:
    return E.device_for_gpu(cat.find_gpu(name, cat.load_gpus()), a)


# --- D6: `gradient_checkpointing: auto` ------------------------------------------------------------------------


def test_under_auto_a_larger_card_never_shows_smaller_limits(shipped, a):
    """The limits under `auto` are those with checkpointing on: training turns it on for a step that would not
    fit easily. Until 2026-12-05 they followed the recipe's own step, which runs without it on a large card:
    RTX 4090 42 / 5,265 (on) against H100 17 / 2,199 (off) for this recipe."""
    recipe = shipped("llama3-8b-pirate.yaml")
    small, large = (E.estimate(recipe, gpu=name).rows[0] for name in ("RTX 4090", "H100"))
    assert small.gradient_checkpointing and not large.gradient_checkpointing  # the recipe's own step, as trained
    assert large.max_batch_size >= small.max_batch_size and large.max_seq_len >= small.max_seq_len

    # batch_size rows of the longest max_length fit with checkpointing on, one token more does not.
    shape, tokens, h100 = E.model_shape(recipe.base_model), E.count_tokens(recipe, None, a), _card("H100", a)
    peak, _ = E.run_setups(recipe, h100, tokens, shape=shape)
    rows_of = lambda seq: E.memory(shape, replace(peak, checkpointing=True, batch=4, seq=seq), a)  # noqa: E731
    assert E.fits(rows_of(large.max_seq_len), h100.capacity_gb)
    assert not E.fits(rows_of(large.max_seq_len + 1), h100.capacity_gb)

    # An explicit `false` is what training runs: its limits stay those without checkpointing.
    off = E.estimate(shipped("llama3-8b-pirate.yaml", "training.gradient_checkpointing=false"), gpu="H100").rows[0]
    assert not off.gradient_checkpointing and off.max_seq_len < large.max_seq_len


def test_two_80gb_cards_hold_at_least_what_two_40gb_cards_do(shipped):
    # The reviewer's case: 2 x A100 40GB read max batch 101 / max seq 7,595, 2 x A100 80GB 19 / 1,489.
    recipe = shipped("qwen2.5-7b-ojousama.yaml")
    forty, eighty = (E.estimate(recipe, gpu=name, num_gpus=2).rows[0] for name in ("A100 40GB", "A100 80GB"))
    assert eighty.max_batch_size >= forty.max_batch_size and eighty.max_seq_len >= forty.max_seq_len


# --- D7: packed recipes: rows, not lines --------------------------------------------------------------------------


def test_a_packed_recipes_batch_suggestion_keeps_its_effective_batch_and_its_own_peak(shipped, a):
    """Until 2026-12-05: 'training.batch_size=1 training.gradient_accumulation=8 (same effective batch 8): 13.4 GB'
    for a recipe of 4 x 4 = 16: the effective batch was counted from the packed batch's 2 lines."""
    recipe = shipped("llama3-8b-pirate.yaml", "training.gradient_checkpointing=false")
    result = E.estimate(recipe, gpu="4060 ti")
    row = result.rows[0]
    assert not row.fits and row.suggestions
    found = re.fullmatch(r"training\.batch_size=(\d+) training\.gradient_accumulation=(\d+) "
                         r"\(same effective batch (\d+)\): ([\d.]+) GB", row.suggestions[0])
    assert found, row.suggestions
    batch, accum, effective = (int(found.group(i)) for i in (1, 2, 3))
    assert batch * accum == effective == recipe.training.batch_size * recipe.training.gradient_accumulation
    assert batch < recipe.training.batch_size

    # The figure is the peak of the run at that batch_size: the epoch laid out again, as training lays it out.
    from finetune.packing import epoch_batches, lines_of

    shape, tokens, card = E.model_shape(recipe.base_model), E.count_tokens(recipe, None, a), _card("4060 ti", a)
    peak = E.peak_after(recipe, card, tokens, shape, batch_size=batch)
    assert float(found.group(4)) == round(E.memory(shape, peak, a).total_gb, 1) <= card.capacity_gb
    if batch > 1:  # batch_size 1 is never packed
        layouts = [(len(lines_of(rows, max(rows))), max(rows))
                   for rows in ([tokens.lengths[i] for i in b]
                                for b in epoch_batches(tokens.lengths, batch, recipe.training.seed))]
        assert result.packed and (peak.batch, peak.seq) == max(layouts, key=lambda layout: layout[0] * layout[1])


def test_a_packed_recipes_longest_max_length_fits_batch_size_rows_that_long(tmp_path, a):
    """docs/estimate.md: max_seq_len is at the recipe's batch size. A packed run's largest step is laid out in lines
    (here fewer than its 8 rows); until 2026-12-05 the longest max_length was found at that line count."""
    recipe = _recipe(tmp_path, "meta-llama/Llama-3.1-8B-Instruct", quantization="{bits: 4}",
                     training="{batch_size: 8, seed: 3, gradient_checkpointing: true}")
    lengths = [30 + (i * 37) % 200 for i in range(64)]  # short rows against max_length 512: training packs them
    tokens = E.Tokens(len(lengths), 0, lengths, [], "tokenizer", prompt_lengths=[10] * len(lengths))
    shape, card = E.model_shape(recipe.base_model), _card("RTX 4060 Ti 16GB", a)
    from finetune.estimate.plan import _row

    row = _row(recipe, shape, card, tokens, 1, "ddp", "USD", cat.load_rates(), a)
    peak, _ = E.run_setups(recipe, card, tokens, shape=shape)
    assert peak.batch != 8 and row.fits
    rows_of = lambda seq: E.memory(shape, replace(peak, batch=8, seq=seq), a)  # noqa: E731
    assert E.fits(rows_of(row.max_seq_len), card.capacity_gb)
    assert not E.fits(rows_of(row.max_seq_len + 1), card.capacity_gb)
    # The largest batch_size is in rows too, and the run at it, laid out as training would, fits.
    assert row.max_batch_size >= 8
    at_most = E.peak_after(recipe, card, tokens, shape, batch_size=row.max_batch_size)
    assert E.fits(E.memory(shape, at_most, a), card.capacity_gb)


# --- D9: a CPU's memory, not a GPU's --------------------------------------------------------------------------


def test_a_cpu_that_cannot_hold_the_run_is_told_about_its_memory_not_a_gpu(a):
    """Until 2026-12-05 a CPU row read 'needs a GPU with at least 22 GB even at 4-bit, batch 1': its own (CPU)
    peak, worded for a GPU."""
    shape = E.model_shape("meta-llama/Llama-3.1-8B-Instruct")
    cpu = E.Setup(bits=4, device="cpu", precision="bf16", checkpointing=False, batch=4, seq=512)
    available = 8.0
    capacity = available * a.cpu_usable_memory_fraction
    lean = E.memory(shape, replace(cpu, checkpointing=True, batch=1), a).total_gb
    expected = (f"needs about {lean / a.cpu_usable_memory_fraction:.0f} GB of memory even at 4-bit, batch 1; "
                f"this machine has {available:.0f} GB available")
    # Nothing about a GPU, nor about sharding over GPUs a CPU does not have; plan.py passes the RAM available.
    assert E.suggestions(shape, cpu, capacity, 4, a) == [expected]
    assert E.suggestions(shape, cpu, capacity, 4, a, memory_gb=available) == [expected]


# --- wording -----------------------------------------------------------------------------------------------------


def _cli(args: list[str]) -> str:
    """`finetune estimate ARGS`' output, whitespace as one space (rich wraps at 120 columns)."""
    import typer
    from typer.testing import CliRunner

    from finetune.estimate.cli import estimate_command

    app = typer.Typer()
    app.command("estimate")(estimate_command)
    app.command("other")(lambda: None)  # two commands, so the estimate command keeps its name
    result = CliRunner().invoke(app, ["estimate", *args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_one_of_a_thing_is_singular(tmp_path):
    one = _recipe(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct", quantization="{bits: null}",
                  training="{batch_size: 2, epochs: 1}")
    line = E.estimate_for_training(one, gpu_name="RTX 4090")[0][1]
    assert "tokens/epoch x 1 epoch;" in line, line
    assert E.counted(1, "optimizer step") == "1 optimizer step" and E.counted(2.5, "epoch") == "2.5 epochs"
    assert E.counted(1200, "training row") == "1,200 training rows" and E.counted(2, "batch", "batches") == "2 batches"


def test_the_footer_names_the_row_as_the_table_does(tmp_path):
    recipe = _recipe(tmp_path, "meta-llama/Llama-2-7b-hf", quantization="{bits: 4}")
    out = _cli([str(tmp_path / "recipe.yaml"), "--gpu", "A100 80GB", "--gpus", "2", "--strategy", "fsdp"])
    assert recipe.name in out
    assert re.search(r"time assumes 35% of a GPU's dense peak: [\d.]+ min on 2 x A100 80GB \(fsdp\);", out), out


def test_a_cpu_rows_footer_and_overhead_say_what_a_cpu_has(tmp_path):
    home = Path.home() / ".cache" / "finetune" / "hardware.json"  # spare a fresh matmul measurement
    from finetune.paths import finetune_home

    if home.exists():
        shutil.copy(home, finetune_home() / "hardware.json")
    _recipe(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct", quantization="{bits: null}",
            training="{batch_size: 2, epochs: 1}")
    out = _cli([str(tmp_path / "recipe.yaml")])
    data = json.loads(" ".join(_cli([str(tmp_path / "recipe.yaml"), "--json"]).split()))
    if data["setup"]["device"] == "cpu":
        assert "of this CPU's measured matmul peak" in out and "of a GPU's" not in out
        assert "on this machine (CPU);" in out and "process baseline, allocator margin" in out
        assert "CUDA context" not in out
    else:  # run on a CUDA machine: the GPU's words
        assert "of a GPU's dense peak" in out and "CUDA context" in out and "process baseline" not in out


def test_a_recipes_max_time_is_said_where_the_predicted_time_runs_past_it(tmp_path):
    # The demo recipe stops inside max_time 4m; the estimate said "11 min" and nothing of the budget.
    recipe = _recipe(tmp_path, "meta-llama/Llama-2-7b-hf", quantization="{bits: 4}",
                     training="{epochs: 3, max_time: 1m, fit_to_budget: true}")
    out = " ".join(_cli([str(tmp_path / "recipe.yaml"), "--gpu", "T4"]).split())
    steps = int(re.search(r"= ([\d,]+) optimizer steps", out).group(1).replace(",", ""))
    match = re.search(r"max_time 1m00s: fit_to_budget ends the schedule inside it, after about (\d+) of the "
                      rf"{steps} steps at this speed on T4", out)
    assert match and 1 <= int(match.group(1)) < steps, out
    line = E.estimate_for_training(recipe, gpu_name="T4")[0][1]
    assert f"; max_time 1m00s: fit_to_budget ends the schedule inside it, after about {match.group(1)} of the " \
           f"{steps} steps" in line, line
    roomy = _recipe(tmp_path, "meta-llama/Llama-2-7b-hf", quantization="{bits: 4}", training="{max_time: 300h}")
    assert "max_time" not in E.estimate_for_training(roomy, gpu_name="T4")[0][1]
    out = " ".join(_cli([str(tmp_path / "recipe.yaml"), "--gpu", "T4"]).split())
    assert "max_time 300h00m: the predicted time fits inside it on T4" in out, out
    assert json.loads(" ".join(_cli([str(tmp_path / "recipe.yaml"), "--json"]).split()))["max_time_s"] == 300 * 3600
