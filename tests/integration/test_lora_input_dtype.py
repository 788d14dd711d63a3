"""On a CPU training in bf16, LoRA's inputs stay bf16: peft's input casting is off around each forward."""

import pytest
import torch
from transformers import TrainerCallback

from finetune.recipe import parse_recipe
from finetune.train import train
from tests.conftest import recipe_dict

pytestmark = pytest.mark.slow


def test_lora_inputs_stay_bf16_on_a_bf16_cpu(tiny_llama, pirate_rows, tmp_path):
    seen: list[torch.dtype] = []

    class Watch(TrainerCallback):
        """Record the dtype reaching one LoRA A matrix during the real training steps."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            layer = next(m for n, m in model.named_modules() if n.endswith("lora_A.default"))
            layer.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))

    spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=2, batch_size=2, precision="bf16")
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", callbacks=[Watch()], say=lambda *_: None)
    assert summary["precision"] == "bf16" and seen
    # peft would upcast each input to the fp32 LoRA weight (dropout noise drawn and kept in fp32).
    assert set(seen) == {torch.bfloat16}


def test_cpu_training_draws_lora_dropout_masks_in_bulk(tiny_llama, pirate_rows, tmp_path):
    from finetune.cpu_dropout import CpuDropout

    seen: list[type] = []

    class Watch(TrainerCallback):
        """Record the dropout modules the real training steps run LoRA's inputs through."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.extend(type(m) for n, m in model.named_modules() if n.endswith("lora_dropout.default"))

    spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=2, batch_size=2)
    spec["lora"]["dropout"] = 0.1
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", callbacks=[Watch()], say=lambda *_: None)
    assert summary["status"] == "completed" and seen
    # torch's nn.Dropout draws one Bernoulli variate per element: on a CPU that cost as much as the matmuls.
    assert set(seen) == {CpuDropout}


def test_bf16_logits_reach_the_loss_without_an_fp32_copy(tiny_llama, pirate_rows, tmp_path):
    seen: list[torch.dtype] = []

    class Watch(TrainerCallback):
        """Record the logits' dtype as the model call returns them to compute_loss (after any forward wrapper)."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_hook(lambda module, inputs, output: seen.append(output.logits.dtype))

    spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=2, batch_size=2, precision="bf16")
    summary = train(parse_recipe(spec), output_dir=tmp_path / "run", callbacks=[Watch()], say=lambda *_: None)
    assert summary["status"] == "completed" and seen
    # accelerate's bf16 wrapper copies every output to fp32: for the logits, time and memory the chunked loss
    # does not need (finetune/loss.py upcasts a chunk at a time). Training and the evaluation both run in bf16.
    assert set(seen) == {torch.bfloat16}
