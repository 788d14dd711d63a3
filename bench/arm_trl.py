"""One TRL arm of the bench in its own process: SFTTrainer on the same pre-tokenised rows and LoRA.

    python -m bench.arm_trl SETTINGS OUT --mode defaults|tuned [--precision bf16|fp32] [--max-steps N]

`defaults` keeps SFTConfig's own choices (bf16 autocast, gradient checkpointing, its fused log-prob head);
`tuned` sets the precision given and turns gradient checkpointing off. Both get finetune's LoRA, batch size,
learning rate, schedule and seed, and the rows with finetune's labels, so the masking is the same.
Writes OUT/steps.jsonl (one line per optimizer step, for the orchestrator's clock), OUT/result.json and
OUT/adapter/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.common import BenchSettings, tokenized_rows


def _step_logger(path: Path) -> Any:
    """A TrainerCallback that appends (step, non-padding tokens so far) at every optimizer step end."""
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        """One JSON line per step, flushed at once so the orchestrator sees when the step ended."""

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            with open(path, "a", encoding="utf-8") as handle:
                record = {"step": state.global_step, "tokens": int(state.num_input_tokens_seen)}
                handle.write(json.dumps(record) + "\n")
            return control

    return StepLog()


def sft_config(settings: BenchSettings, out: Path, mode: str, precision: str | None, max_steps: int | None,
               use_cpu: bool) -> Any:
    """SFTConfig: TRL's defaults plus the shared hyperparameters; `tuned` sets precision, no checkpointing."""
    from trl import SFTConfig

    t = settings.training
    tuned = {} if mode == "defaults" else {"bf16": precision == "bf16", "activation_checkpointing": False}
    return SFTConfig(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=1,
        max_steps=max_steps or -1,
        max_length=settings.max_length,
        learning_rate=t["learning_rate"],
        lr_scheduler_type=t["lr_scheduler"],
        warmup_steps=t["warmup_ratio"],  # a float below 1 is a ratio of total steps (as finetune passes it)
        weight_decay=t["weight_decay"],
        max_grad_norm=t["max_grad_norm"],
        seed=t["seed"],
        data_seed=t["seed"],
        use_cpu=use_cpu,
        include_num_input_tokens_seen="non_padding",  # the same token count the finetune arms report
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        **tuned,
    )


def main(argv: list[str] | None = None) -> int:
    """Train one TRL arm and write its result files."""
    parser = argparse.ArgumentParser(prog="python -m bench.arm_trl")
    parser.add_argument("settings")
    parser.add_argument("out")
    parser.add_argument("--mode", choices=("defaults", "tuned"), required=True)
    parser.add_argument("--precision", choices=("bf16", "fp32"))
    parser.add_argument("--max-steps", type=int)
    args = parser.parse_args(argv)

    import torch
    from trl import SFTTrainer

    from finetune.models import load_tokenizer, resolve_base_model
    from finetune.recipe import parse_recipe
    from finetune.train import lora_config

    settings = BenchSettings.load(args.settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = parse_recipe(settings.recipe_data("bench-trl", None))
    tokenizer = load_tokenizer(recipe)
    train_ds = tokenized_rows(tokenizer, settings.train_path, settings.max_length)
    cuda = torch.cuda.is_available()
    config = sft_config(settings, out, args.mode, args.precision, args.max_steps, use_cpu=not cuda)
    trainer = SFTTrainer(
        model=resolve_base_model(settings.base_model),  # TRL loads it its own way (fp32 by default)
        args=config,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=lora_config(recipe),
        callbacks=[_step_logger(out / "steps.jsonl")],
    )
    result = trainer.train()
    if cuda:
        peaks = {"peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                 "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
    else:
        peaks = {}
    if args.max_steps is None:
        trainer.save_model(str(out / "adapter"))
    precision = "bf16" if config.bf16 else "fp16" if config.fp16 else "fp32"
    (out / "result.json").write_text(json.dumps({
        "precision": precision, "checkpointing": bool(config.activation_checkpointing),
        "train_loss": result.training_loss, "steps": trainer.state.global_step, **peaks,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
