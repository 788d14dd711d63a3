"""Canary: what finetune overrides or relies on inside transformers, peft and gguf still has its name and shape.

Our Trainer subclass overrides private methods (`_save_checkpoint`, `_get_train_sampler`) and public ones
whose signatures it copies (`compute_loss`, `log`); these were checked against transformers 5.24.0
(pyproject caps transformers below 5.25 for this reason). An upgrade that renames or reshapes any of
them would not fail at import: the override would silently stop being called. This test fails first,
naming what moved. No model is loaded; peft's checks use a two-layer torch module.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
import transformers
from transformers import Trainer, TrainingArguments

CHECKED_AGAINST = {"transformers": "5.24.0", "peft": "0.21.2", "gguf": "0.19.0"}


def params(func: object) -> list[str]:
    """Parameter names of a function, `self` included."""
    return list(inspect.signature(func).parameters)


def moved(what: str) -> str:
    """The failure message: which installed version changed what, and what it was checked against."""
    return (f"transformers {transformers.__version__} changed {what}, which finetune's Trainer subclass "
            f"overrides or relies on (checked against {CHECKED_AGAINST['transformers']}): re-check the override "
            "before lifting the cap in pyproject.toml")


@pytest.mark.parametrize(("name", "expected"), [
    ("_save_checkpoint", ["self", "model", "trial"]),
    ("_get_train_sampler", ["self", "train_dataset"]),
    ("compute_loss", ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]),
    ("log", ["self", "logs", "start_time"]),
    ("create_accelerator_and_postprocess", ["self"]),
    ("_build_accelerator_args", ["self", "kwargs"]),
    ("autocast_smart_context_manager", ["self", "cache_enabled"]),
])
def test_trainer_methods_we_override_keep_name_and_parameters(name, expected):
    assert hasattr(Trainer, name), moved(f"Trainer.{name} (gone)")
    assert params(getattr(Trainer, name)) == expected, moved(f"the parameters of Trainer.{name}")


def test_trainer_still_calls_what_we_override():
    source = inspect.getsource(Trainer)
    assert "self._get_train_sampler" in source, moved("where the train sampler is built")
    assert "self._save_checkpoint(" in source, moved("where checkpoints are saved")
    # We point args.output_dir at a staging folder around super()._save_checkpoint: it must write there.
    save = inspect.getsource(Trainer._save_checkpoint)
    assert "self._get_output_dir(" in save, moved("how _save_checkpoint picks its folder")
    assert "self.args.output_dir" in inspect.getsource(Trainer._get_output_dir), moved("Trainer._get_output_dir")
    assert "loss_is_scaled_for_ga" in source, moved("Trainer.loss_is_scaled_for_ga (gone)")
    # bf16 autocast moves from accelerate's forward wrapper into compute_loss_context_manager (trainer.py).
    assert "self.compute_loss_context_manager()" in source, moved("where compute_loss runs under autocast")
    assert "self.autocast_smart_context_manager()" in inspect.getsource(Trainer.compute_loss_context_manager), \
        moved("compute_loss_context_manager")
    assert "dynamo_plugin" in inspect.getsource(Trainer._build_accelerator_args), moved("the dynamo plugin")


def test_training_arguments_and_helpers_we_use():
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for name in ("activation_checkpointing", "activation_checkpointing_kwargs", "average_tokens_across_devices",
                 "train_sampling_strategy", "data_seed"):
        assert name in fields, moved(f"TrainingArguments.{name}")
    from transformers.trainer_callback import PrinterCallback, ProgressCallback  # removed by train.py
    from transformers.trainer_pt_utils import get_length_grouped_indices
    from transformers.trainer_utils import rotate_checkpoints

    assert {"output_dir", "save_total_limit", "use_mtime"} <= set(params(rotate_checkpoints)), moved(
        "rotate_checkpoints")
    assert params(get_length_grouped_indices)[:2] == ["lengths", "batch_size"], moved("get_length_grouped_indices")
    assert "generator" in params(get_length_grouped_indices), moved("get_length_grouped_indices(generator=)")
    assert PrinterCallback and ProgressCallback


def test_models_take_cache_and_caches_batch_ops():
    """compare/likelihood.py passes `cache=` and reshapes a cache across a batch."""
    from transformers import DynamicCache, LlamaForCausalLM

    assert "cache" in params(LlamaForCausalLM.forward), moved("the model forward's cache= argument")
    for name in ("batch_repeat_interleave", "batch_select_indices"):
        assert hasattr(DynamicCache, name), moved(f"DynamicCache.{name}")


def test_peft_public_helpers_we_use():
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.helpers import disable_input_dtype_casting

    assert "inference_mode" in params(PeftModel.set_adapter), "peft: set_adapter(inference_mode=) is gone"
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)),
                           LoraConfig(r=2, target_modules=["0", "1"]))
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert len(layers) == 2, "peft: LoRA layers no longer carry cast_input_dtype_enabled"
    with disable_input_dtype_casting(model, active=True):
        assert not any(m.cast_input_dtype_enabled for m in layers), "peft: the casting helper no longer disables"
    assert all(m.cast_input_dtype_enabled for m in layers), "peft: the casting helper no longer restores"


def test_gguf_reader_field_contents():
    from gguf import ReaderField

    assert callable(getattr(ReaderField, "contents", None)), "gguf: ReaderField.contents() is gone"
