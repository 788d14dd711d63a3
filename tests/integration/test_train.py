"""The spine, for real: recipe → training on the bundled model → adapter that reproduces the trained logits."""

import json
import math

import pytest
import torch
from transformers import TrainerCallback

from finetune.recipe import parse_recipe
from finetune.train import train
from tests.conftest import recipe_dict

pytestmark = pytest.mark.slow


class KeepModel(TrainerCallback):
    """Hands the test the model the trainer trained (train() itself returns only the summary)."""

    model = None

    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self.model = model


def test_loss_falls_over_30_steps_and_adapter_reloads_exactly(bundled_dir, pirate_rows, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = recipe_dict("bundled:smollm2-135m-instruct", pirate_rows, max_steps=30, batch_size=4,
                       learning_rate=5e-4, lr_scheduler="constant", warmup_ratio=0.0)
    spec["dataset"]["eval_fraction"] = 0.0
    recipe = parse_recipe(spec)
    keep = KeepModel()
    summary = train(recipe, output_dir=tmp_path / "run", callbacks=[keep], say=lambda *_: None)
    trained = keep.model
    assert summary["status"] == "completed" and summary["steps"] == 30

    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run/metrics.jsonl").read_text().splitlines())
              if r.get("loss") is not None]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"loss should fall clearly: first five {first:.3f}, last five {last:.3f}"

    # The saved adapter, loaded with plain PEFT onto a fresh base, gives the trained model's logits.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run/adapter")
    batch = tokenizer(["Ahoy, how do I bake bread?"], return_tensors="pt")
    from accelerate.utils import extract_model_from_parallel

    # accelerate wraps forward in autocast for bf16 training; compare the weights themselves, in fp32.
    trained = extract_model_from_parallel(trained, keep_fp32_wrapper=False).float().eval()
    with torch.no_grad():
        expected = trained(**batch).logits.float()
    # A CPU that trains in bf16 keeps the frozen base in bf16 (finetune.train.keep_frozen_weights_in_bf16):
    # the adapter must reproduce the trained model on that same base, cast up to fp32 like `trained` above.
    base_dtype = torch.bfloat16 if summary["precision"] == "bf16" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=base_dtype).float()
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run/adapter").eval()
    with torch.no_grad():
        got = reloaded(**batch).logits.float()
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    with reloaded.disable_adapter(), torch.no_grad():
        plain = reloaded(**batch).logits.float()
    assert (plain - expected).abs().max() > 1e-2, "the adapter must actually change the model"
    assert (tmp_path / "run/adapter/adapter_model.safetensors").is_file()
    assert (tmp_path / "run/recipe.yaml").read_text().startswith("name: t")


def test_learning_rate_auto_is_chosen_by_the_base_size_and_recorded(tiny_llama, pirate_rows, tmp_path):
    """`learning_rate: auto` trains with the small-model rate here (a tiny model), says so, and records it."""
    from finetune.trainer import AUTO_LEARNING_RATE

    spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=2, learning_rate="auto", lr_scheduler="constant",
                       warmup_ratio=0.0)
    lines: list[str] = []
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", say=lines.append)
    assert summary["learning_rate"] == AUTO_LEARNING_RATE["small"]
    assert any(line.startswith("learning rate 0.001 (auto, for a base of") for line in lines), lines
    rates = [r["learning_rate"] for r in map(json.loads, (tmp_path / "run/metrics.jsonl").read_text().splitlines())
             if r.get("learning_rate") is not None]
    assert rates and all(rate == AUTO_LEARNING_RATE["small"] for rate in rates)
    assert "learning_rate: auto" in (tmp_path / "run/recipe.yaml").read_text()  # the run keeps the setting
