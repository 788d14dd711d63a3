"""The bench's pure parts: held-out loss, timing arithmetic, speedups, table and row selection."""

from __future__ import annotations

import math
import re

import pytest
import torch

from bench.common import (
    BenchSettings,
    compile_line,
    final_lines,
    format_table,
    heldout_loss,
    masked_token_loss,
    peak_share,
    speedup,
    split_rows,
    step_rates,
)
from bench.run import _read_new_lines


def _tiny_model(seed: int = 0):  # noqa: ANN202
    """A real (tiny, random) llama: the held-out loss runs the same forward as for the bundled model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _rows() -> list[dict]:
    """Rows of different lengths with prompt tokens unlabelled, like finetune's tokenisation."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for length, prompt in ((9, 4), (14, 6), (6, 2), (11, 7), (7, 3)):
        ids = torch.randint(3, 64, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def test_masked_token_loss_matches_a_hand_computed_cross_entropy():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, 3, 1, -100, 6], [-100, -100, 2, 2, 0]])
    total, count = masked_token_loss(logits, labels)
    expected, n = 0.0, 0
    for b in range(2):
        for t in range(4):
            target = int(labels[b, t + 1])
            if target != -100:
                expected -= float(torch.log_softmax(logits[b, t], -1)[target])
                n += 1
    assert count == n == 6
    assert total == pytest.approx(expected, rel=1e-5)


def test_heldout_loss_equals_the_models_own_loss_on_one_batch():
    from finetune.data import collate

    model, rows = _tiny_model(), _rows()
    batch = collate(rows, pad_id=0)
    with torch.no_grad():
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=batch["labels"]).loss
    assert heldout_loss(model, rows, pad_id=0, batch_size=len(rows)) == pytest.approx(float(own), rel=1e-5)


def test_heldout_loss_does_not_depend_on_batching_or_padding():
    model, rows = _tiny_model(), _rows()
    one = heldout_loss(model, rows, pad_id=0, batch_size=1)
    assert heldout_loss(model, rows, pad_id=0, batch_size=2) == pytest.approx(one, rel=1e-5)
    assert heldout_loss(model, rows, pad_id=0, batch_size=5) == pytest.approx(one, rel=1e-5)


def test_heldout_loss_is_identical_for_the_same_state_however_the_arm_wrapped_it():
    from peft import LoraConfig, get_peft_model

    rows = _rows()
    plain = heldout_loss(_tiny_model(), rows, pad_id=0, batch_size=2)
    # A fresh LoRA adapter (B = 0) leaves the state unchanged: the loss must not move, dropout included.
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules="all-linear")
    wrapped = get_peft_model(_tiny_model(), config)
    wrapped.train()
    assert heldout_loss(wrapped, rows, pad_id=0, batch_size=2) == plain
    assert wrapped.training  # the caller's mode is restored
    other = heldout_loss(_tiny_model(seed=1), rows, pad_id=0, batch_size=2)
    assert other != plain


def test_step_rates_skip_the_first_step():
    points = [(30.0, 1, 800), (32.0, 2, 1600), (34.0, 3, 2500), (36.0, 4, 3200)]
    rates = step_rates(points)
    assert rates["time_to_first_step_s"] == 30.0
    assert rates["seconds_per_step"] == pytest.approx(2.0)
    assert rates["tokens_per_s"] == pytest.approx((3200 - 800) / 6.0)
    assert step_rates([])["tokens_per_s"] is None
    assert step_rates([(5.0, 1, 10)])["seconds_per_step"] is None


def test_speedup_and_peak_share_arithmetic():
    assert speedup(900.0, 300.0) == pytest.approx(3.0)
    assert speedup(900.0, None) is None
    assert speedup(None, 300.0) is None
    # 4 x 100M parameters x 500 tokens/s = 200 GFLOP/s, a quarter of an 800 GFLOP/s peak.
    assert peak_share(100_000_000, 500.0, 800.0) == pytest.approx(0.25)
    assert peak_share(100_000_000, None, 800.0) is None


def _results() -> list[dict]:
    return [
        {"arm": "finetune", "precision": "bf16", "checkpointing": False, "tokens_per_s": 1000.0,
         "seconds_per_step": 0.9, "time_to_first_step_s": 12.3, "wall_s": 40.0, "peak_rss_mb": 2100.0,
         "peak_rss_steps_mb": 1900.0, "heldout_loss": 1.23456},
        {"arm": "trl-defaults", "precision": "bf16", "checkpointing": True, "tokens_per_s": 250.0,
         "seconds_per_step": 3.6, "time_to_first_step_s": 20.0, "wall_s": 95.0, "peak_rss_mb": 3000.0,
         "heldout_loss": 1.25},
        {"arm": "trl-tuned", "precision": "fp32", "checkpointing": False, "tokens_per_s": 400.0,
         "seconds_per_step": 2.2, "time_to_first_step_s": 18.0, "wall_s": 70.0, "peak_rss_mb": None,
         "heldout_loss": None},
    ]


def test_final_lines_are_exactly_the_three_promised_lines():
    lines = final_lines(_results(), parameters=100_000_000, peak_gflops=800.0)
    assert lines == [
        "speedup vs trl-defaults: 4.00x", "speedup vs trl-tuned: 2.50x", "share of matmul peak: 50%",
    ]
    patterns = [r"speedup vs trl-defaults: \d+\.\d\dx", r"speedup vs trl-tuned: \d+\.\d\dx",
                r"share of matmul peak: \d+%"]
    assert all(re.fullmatch(p, line) for p, line in zip(patterns, lines, strict=True))
    missing = final_lines(_results()[:1], parameters=100_000_000, peak_gflops=None)
    assert missing == ["speedup vs trl-defaults: -x", "speedup vs trl-tuned: -x", "share of matmul peak: -%"]


def test_compile_line_compares_the_compiled_arm_with_the_same_packed_batches_eager():
    packed = {**_results()[0], "arm": "finetune-packed", "tokens_per_s": 1200.0, "peak_rss_mb": 1900.0,
              "time_to_first_step_s": 11.0}
    compiled = {**_results()[0], "arm": "finetune-packed-compiled", "tokens_per_s": 1500.0, "peak_rss_mb": 1600.0,
                "time_to_first_step_s": 40.0}
    line = compile_line([*_results(), packed, compiled], parameters=100_000_000, peak_gflops=800.0)
    assert line == ("packed: compiled vs eager (tokens/s): 1.25x; peak RSS 1600 vs 1900 MB; first step 40.0 vs "
                    "11.0 s; compiled share of matmul peak: 75%")
    assert compile_line([*_results(), packed], parameters=100_000_000, peak_gflops=800.0).startswith(
        "packed: compiled vs eager (tokens/s): -x; peak RSS - vs 1900 MB")


def test_format_table_aligns_columns_and_marks_missing_values():
    table = format_table(_results(), cuda=False).splitlines()
    assert table[0].split() == [
        "arm", "precision", "ckpt", "tokens/s", "s/step", "first", "step", "s", "wall", "s",
        "peak", "RSS", "MB", "steps", "RSS", "MB", "held-out", "loss",
    ]
    assert len({len(line) for line in table}) == 1  # every line padded to the same width
    assert table[2].split() == ["finetune", "bf16", "off", "1000", "0.90", "12.3", "40.0", "2100", "1900",
                                "1.2346"]
    assert table[4].split()[-3:] == ["-", "-", "-"]
    gpu_row = {**_results()[0], "peak_allocated_mb": 900.0, "peak_reserved_mb": 1100.5}
    cuda = format_table([gpu_row], cuda=True)
    assert "peak alloc MB" in cuda and "1100" in cuda.splitlines()[2]


def test_split_rows_is_seeded_disjoint_and_sized():
    train, held = split_rows(100, rows=40, heldout=10, seed=3)
    assert len(train) == 40 and len(held) == 10 and not set(train) & set(held)
    assert (train, held) == split_rows(100, rows=40, heldout=10, seed=3)
    assert split_rows(100, rows=40, heldout=10, seed=4) != (train, held)
    # More training rows keep the same held-out set, so losses stay comparable across --rows.
    assert split_rows(100, rows=80, heldout=10, seed=3)[1] == held


def test_bench_recipes_are_valid_finetune_recipes():
    from finetune.recipe import parse_recipe

    settings = BenchSettings.with_finetune_defaults("bundled:smollm2-135m-instruct", "t.jsonl", "h.jsonl")
    lora = parse_recipe(settings.recipe_data("bench-finetune", None))
    qlora = parse_recipe(settings.recipe_data("bench-qlora", 4))
    compiled = parse_recipe(settings.recipe_data("bench-compiled", None, packing=False, compile=True))
    assert compiled.training.compile and not lora.training.compile
    assert lora.quantization.bits is None and qlora.quantization.bits == 4
    assert lora.training.precision == "auto" and lora.training.gradient_checkpointing == "auto"
    assert lora.training.epochs == 1 and lora.training.batch_size == 8 and lora.dataset.eval_fraction == 0
    assert (lora.lora.r, lora.lora.alpha) == (16, 32)
    assert math.isclose(settings.training["learning_rate"], lora.training.learning_rate)


def test_read_new_lines_waits_for_a_whole_line(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"step": 1, "tokens": 5}\n{"step": 2, "tok')
    records, offset = _read_new_lines(path, 0)
    assert records == [{"step": 1, "tokens": 5}]
    with open(path, "a") as handle:
        handle.write('ens": 9}\n')
    records, _ = _read_new_lines(path, offset)
    assert records == [{"step": 2, "tokens": 9}]
    assert _read_new_lines(tmp_path / "absent.jsonl", 0) == ([], 0)
