"""The Trainer machinery behind train.py: our loss and sampler, atomic checkpoints, run control, signals.

train.py reads as the run; what happens inside trainer.train() (how the loss is computed, when to stop,
how a checkpoint is written) lives here, with the TrainingArguments the recipe and the hardware decide.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from finetune import atomic, hardware
from finetune.data import collate, row_lengths
from finetune.packing import PackedBatchSampler, PackingChoice, choose_packing, collate_packed
from finetune.rank import agree_on_stop, peak_over_ranks, reduce_max
from finetune.recipe import Recipe
from finetune.runs import LEDGER_FILE
from finetune.schedule_fit import STOP_MARGIN_STEPS, fit_due
from finetune.telemetry import Ledger, Telemetry, format_duration


def attention_kernels(cpu_bf16: bool, width: int, checkpointing: bool) -> Any:
    """torch's matmul attention for short bf16 batches on a CPU; its default kernel choice otherwise."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    # On a CPU in bf16 the flash-attention kernel was ~1.7x slower than the matmul path up to ~160 tokens
    # (forward and backward; a 9% faster step on the bundled model, docs/bench.md). The matmul path keeps the
    # L x L attention weights for backward, so longer batches stay on flash; checkpointing would recompute
    # outside this context, with the other kernel.
    if hardware.math_attention(cpu_bf16, width, checkpointing):
        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


def build_trainer(
    model: Any, args: Any, train_ds: Any, eval_ds: Any, tokenizer: Any, run_state: RunState,
    callbacks: list[Any] | None = None,
) -> Any:
    """Our Trainer for this run: the recipe's arguments, run control first, our telemetry instead of tqdm."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    recipe = run_state.recipe
    run_state.packing = choose_packing(
        recipe.training.packing, model.config.model_type, model.config._attn_implementation, args.device.type,
        row_lengths(train_ds), recipe.dataset.max_length, recipe.training.batch_size,
    )
    if run_state.packing.enabled:
        collator = partial(collate_packed, pad_id=tokenizer.pad_token_id, one_line=run_state.packing.one_line)
    else:
        collator = partial(collate, pad_id=tokenizer.pad_token_id)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[_control_callback(run_state), *(callbacks or [])],
        run_state=run_state,
    )
    # Evaluation batches, for fitting the schedule to a time budget (each costs about a forward pass).
    run_state.eval_batches = math.ceil(len(eval_ds) / args.per_device_eval_batch_size) if eval_ds else 0
    trainer.remove_callback(PrinterCallback)  # our telemetry prints progress
    trainer.remove_callback(ProgressCallback)
    return trainer


def _trainer_class() -> type:
    """The Trainer subclass, built on first use so importing this module does not import transformers."""
    import torch
    from peft.helpers import disable_input_dtype_casting
    from transformers import Trainer
    from transformers.trainer_pt_utils import get_length_grouped_indices
    from transformers.trainer_utils import rotate_checkpoints

    from finetune.loss import summed_cross_entropy

    class EpochSeededLengthSampler(torch.utils.data.Sampler):
        """Length-grouped order drawn from seed + epoch, so a resumed run sees exactly the same batches.

        transformers' own LengthGroupedSampler draws from the global RNG, whose state at an epoch's start
        differs after a resume, and the resumed run then trains on other batches than the original would.
        """

        def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
            self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return len(self.lengths)

        def __iter__(self):  # noqa: ANN204
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    class LoRATrainer(Trainer):
        """transformers' Trainer with a loss computed only where labels exist, and atomic checkpoints."""

        # The private Trainer methods overridden here (_get_train_sampler, _save_checkpoint) and the signatures
        # copied (compute_loss, log) were checked against transformers 5.24.0. tests/unit/test_private_overrides.py
        # fails when an upgrade renames or reshapes them; pyproject caps transformers below 5.25 until it passes.
        loss_is_scaled_for_ga = True  # compute_loss already divides by the accumulated token count

        def __init__(self, *args: Any, run_state: RunState, **kwargs: Any) -> None:
            self.bf16_autocast_device: str | None = None
            super().__init__(*args, **kwargs)
            self.run_state = run_state

        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            # In bf16, accelerate wraps the model's forward in autocast and then copies every bf16 output to
            # fp32: for us that is the logits, which the loss upcasts a chunk at a time itself (finetune/loss.py).
            # The copy cost ~5% of a CPU step and ~150 MB at its peak (docs/bench.md). The Trainer runs its
            # autocast through autocast_smart_context_manager around every compute_loss (training and
            # evaluation), so the autocast moves there and accelerate stops wrapping. bf16 only: in fp16,
            # accelerate's gradient unscaling also reads native_amp.
            if self.accelerator.native_amp and self.accelerator.mixed_precision == "bf16":
                self.accelerator.native_amp = False
                self.bf16_autocast_device = self.accelerator.device.type

        def _build_accelerator_args(self, **kwargs: Any) -> dict[str, Any]:
            args = super()._build_accelerator_args(**kwargs)
            plugin = args.get("dynamo_plugin")
            if self.args.torch_compile and plugin is not None:
                # One decoder layer compiled and reused for all of them (seconds, not the minutes a whole-model
                # compile took here), with dynamic shapes: batches of every width share one compiled graph.
                plugin.use_regional_compilation = True
                plugin.dynamic = True
            return args

        def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> Any:
            if self.bf16_autocast_device is None:
                return super().autocast_smart_context_manager(cache_enabled)
            return torch.autocast(self.bf16_autocast_device, dtype=torch.bfloat16, cache_enabled=cache_enabled)

        def get_train_dataloader(self):  # noqa: ANN201
            if not self.run_state.packing.enabled:
                return super().get_train_dataloader()
            # Packed batches hold a varying number of rows, so they come from a batch sampler (seeded per epoch
            # like EpochSeededLengthSampler: a resumed run skips to exactly the batches it had not trained).
            lengths = row_lengths(self.train_dataset)
            sampler = PackedBatchSampler(lengths, self.args.per_device_train_batch_size, self.args.data_seed)
            loader = torch.utils.data.DataLoader(
                self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
            )
            return self.accelerator.prepare(loader)

        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = row_lengths(dataset)
            return EpochSeededLengthSampler(lengths, self.args.per_device_train_batch_size, self.args.data_seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            labels = inputs.pop("labels")
            if "position_ids" in inputs:
                # A packed batch: its attention_mask only told the Trainer which tokens are real. Passed on, it
                # would stop transformers from reading the row boundaries from the position ids.
                inputs.pop("attention_mask", None)
            targets = labels[:, 1:]
            # The vocabulary projection is the largest tensor for small models: compute it only at
            # positions where some row has a label (assistant tokens), not over prompts and padding.
            keep = (targets != -100).any(dim=0).nonzero().squeeze(-1)
            cpu_bf16 = self.args.bf16 and self.args.device.type == "cpu"
            width = inputs["input_ids"].shape[1]
            # peft.helpers.disable_input_dtype_casting: see keep_frozen_weights_in_bf16 for why.
            with attention_kernels(cpu_bf16, width, self.args.gradient_checkpointing), \
                    disable_input_dtype_casting(model, active=cpu_bf16):
                outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            logits = outputs.logits
            picked = targets[:, keep]
            # In the head's dtype, upcast a chunk at a time; its backward writes the gradient into these logits
            # (finetune/loss.py): no fp32 copy of them, no logits-sized buffer allocated in the step.
            total = summed_cross_entropy(logits.reshape(-1, logits.size(-1)), picked.reshape(-1))
            count = num_items_in_batch if num_items_in_batch is not None else (picked != -100).sum()
            loss = total / torch.clamp(torch.as_tensor(count, device=total.device), min=1)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
            if model.training:
                self.run_state.observe_loss(loss.detach(), self.state.global_step + 1)
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
            began = time.monotonic()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                self.run_state.paused_s += time.monotonic() - began  # not part of the next step's time

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            # Enrich the trainer's own log record so wandb sees the same fields as metrics.jsonl.
            self.run_state.on_log(self, logs)
            super().log(logs, start_time)

        def _save_checkpoint(self, model, trial):  # noqa: ANN001
            if self.run_state.non_finite_steps or not _weights_finite(model):
                return  # never overwrite a good checkpoint with diverging weights
            # Every rank writes its part (RNG state, optimizer shards) under one staging root that they
            # all agree on; the main process then publishes the whole checkpoint in one atomic swap.
            save_began = time.monotonic()
            final_root = self.args.output_dir
            staging = os.path.join(final_root, ".staging")
            self.args.output_dir = staging
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.output_dir = final_root
            self.accelerator.wait_for_everyone()
            if self.is_world_process_zero():
                name = f"checkpoint-{self.state.global_step}"
                atomic.write_text(Path(staging) / name / LEDGER_FILE, self.run_state.ledger_json())
                atomic.publish_dir(Path(staging) / name, Path(final_root) / name)
                shutil.rmtree(staging, ignore_errors=True)
                rotate_checkpoints(output_dir=final_root, save_total_limit=self.args.save_total_limit, use_mtime=False)
            self.run_state.last_save = time.monotonic()
            self.run_state.save_seconds = max(self.run_state.save_seconds, time.monotonic() - save_began)
            self.run_state.paused_s += time.monotonic() - save_began
            self.accelerator.wait_for_everyone()

    return LoRATrainer


def _weights_finite(model: Any) -> bool:
    """Whether every trainable (LoRA) parameter is finite; checked before each checkpoint."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


class RunState:
    """What the training loop decides between steps: stop for the time budget, a signal or divergence."""

    def __init__(
        self, recipe: Recipe, telemetry: Telemetry, budget_s: float | None, session_start: float | None = None
    ) -> None:
        self.recipe = recipe
        self.telemetry = telemetry
        self.budget_s = budget_s
        # The budget counts from the command's start: loading the model is part of the night too.
        self.session_start = session_start if session_start is not None else time.monotonic()
        self.last_save = time.monotonic()
        self.status = "completed"
        self.message: str | None = None
        self.non_finite_steps = 0
        self.first_bad_step: int | None = None
        self.signal_received: int | None = None
        self.step_times: list[float] = []
        self.last_step_end = time.monotonic()
        self.save_seconds = 0.0
        self.first_step_s: float | None = None
        self.packing = PackingChoice(False, "not decided yet")  # build_trainer decides, summary.json records
        # training.fit_to_budget: the schedule is shortened after the first steps are timed, and again whenever
        # later steps run slower (schedule_fit).
        self.fit_to_budget = bool(recipe.training.fit_to_budget and budget_s is not None)
        self.fit_checked = False  # fitted once already
        self.may_grow = True  # a resumed run keeps its checkpoint's schedule: shortened, never grown
        # Seconds of evaluation and saving since the last step ended: they are not part of the next step's time.
        self.paused_s = 0.0
        self.planned_steps: int | None = None  # the schedule's length before fitting
        self.schedule_steps: int | None = None  # its length once fitted (also restored on --resume)
        self.eval_batches = 0  # build_trainer counts them
        self.learning_rate: float | None = None  # the recipe's, or what `auto` chose (train decides)

    def observe_loss(self, loss: Any, step: int) -> None:
        """Count consecutive non-finite losses (divergence)."""
        if math.isfinite(float(loss)):
            self.non_finite_steps = 0
            self.first_bad_step = None
        else:
            self.non_finite_steps += 1
            self.first_bad_step = self.first_bad_step or step

    def ledger_json(self) -> str:
        """The ledger as of now, stored in each checkpoint so a resumed run keeps its totals."""
        ledger = self.telemetry.ledger
        return Ledger(
            elapsed_before_s=self.telemetry.elapsed(),
            energy_before_wh=(self.telemetry.last_line.get("energy_wh") or ledger.energy_before_wh),
            peak_memory_mb=ledger.peak_memory_mb,
            extra=ledger.extra,  # e.g. the dataset's hash, which --resume checks
        ).to_json()

    def on_log(self, trainer: Any, logs: dict[str, Any]) -> None:
        """Build the metrics record for a trainer log call; write it on the main process only."""
        state = trainer.state
        if "loss" not in logs:
            # Evaluation results and the trainer's closing totals: no new steps, so no throughput.
            if "eval_loss" in logs and trainer.is_world_process_zero():
                record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                          "eval_loss": logs["eval_loss"], "elapsed_s": round(self.telemetry.elapsed(), 2)}
                atomic.append_jsonl(self.telemetry.run_dir / "metrics.jsonl", record)
                self.telemetry.last_eval_loss = logs["eval_loss"]
            return
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        record = self.telemetry.line(state.global_step, state.epoch or 0.0, tokens, logs, state.max_steps)
        peak_over_ranks(record, self.telemetry)  # every rank logs at the same steps, so this cannot hang
        for key in ("tokens_per_s", "peak_memory_mb", "energy_wh", "power_w"):
            if record.get(key) is not None:
                logs[key] = record[key]
        if record.get("cost"):
            logs["cost"] = record["cost"]["amount"]
        if trainer.is_world_process_zero():
            atomic.append_jsonl(self.telemetry.run_dir / "metrics.jsonl", record)
            self.telemetry.show(record)

    def should_stop(self, step: int, last_step: int | None = None) -> str | None:
        """The reason to stop after this step, if any (decided identically on every rank).

        `last_step`: the schedule's last step; after it only the saves need room, not one more step.
        """
        now = time.monotonic()
        self.step_times.append(now - self.last_step_end - self.paused_s)
        self.paused_s = 0.0
        if self.first_step_s is None:
            self.first_step_s = now - self.session_start
        self.last_step_end = now
        if self.signal_received is not None:
            return "interrupted"
        if self.non_finite_steps >= self.recipe.training.divergence_patience:
            return "diverged"
        if self.budget_s is not None:
            recent = self.step_times[-5:]
            step_s = max(recent) if recent and step != last_step else 0.0
            # Leave room for one more step plus saving the adapter and a checkpoint.
            # (A checkpoint and the adapter cost about one save each; the summary and plot a few seconds.)
            margin = STOP_MARGIN_STEPS * step_s + 2 * max(self.save_seconds, 2.0) + 3.0
            if now - self.session_start + margin >= self.budget_s:
                return "time_budget"
        return None


    def fit_schedule(self, args: Any, state: Any, scheduler: Any, optimizer: Any, eval_batches: int) -> None:
        """End the schedule inside the budget (every rank the same): first after the first timed steps, then
        again as the run goes (schedule_fit.next_schedule: shorter when steps ran slower, longer early on)."""
        from finetune import schedule_fit

        self.planned_steps = self.planned_steps or state.max_steps
        if args.eval_strategy == "epoch" and state.num_train_epochs:
            steps_per_eval = self.planned_steps / state.num_train_epochs
        else:
            steps_per_eval = args.eval_steps if args.eval_strategy == "steps" else None
        assert self.budget_s is not None  # fit_to_budget is only on with a budget
        step_s = schedule_fit.typical_step_s(self.step_times)
        fits = schedule_fit.steps_that_fit(
            planned=self.planned_steps, done=state.global_step, elapsed_s=time.monotonic() - self.session_start,
            budget_s=self.budget_s, step_s=step_s,
            save_s=max(self.save_seconds, 2.0), eval_batches=eval_batches, steps_per_eval=steps_per_eval,
        )
        fits = -int(reduce_max([-float(fits)])[0])  # the slowest rank decides
        steps = schedule_fit.next_schedule(current=state.max_steps, fits=fits, done=state.global_step,
                                           may_grow=self.may_grow)
        first = not self.fit_checked
        self.fit_checked = True
        budget = format_duration(self.budget_s)
        if steps != state.max_steps and schedule_fit.refit_scheduler(scheduler, optimizer, steps):
            if first:
                self.telemetry.note(f"time budget {budget}: the schedule now ends at step {steps} of "
                                    f"{state.max_steps} ({step_s:.2f} s per step measured; evaluations and saves "
                                    "included)")
            else:
                pace = "slower" if steps < state.max_steps else "faster"
                self.telemetry.note(f"time budget {budget}: steps ran {pace} ({step_s:.2f} s), the schedule now "
                                    f"ends at step {steps} instead of {state.max_steps}")
            self.apply_schedule(state, steps)
        elif first:
            self.telemetry.note(f"time budget {budget}: all {state.max_steps} steps fit ({step_s:.2f} s per step)")

    def apply_schedule(self, state: Any, steps: int) -> None:
        """Train `steps` steps in all: transformers' flow callback stops there (evaluating and saving)."""
        self.schedule_steps = steps
        state.max_steps = steps
        self.telemetry.ledger.extra["schedule_steps"] = steps  # in every checkpoint, for --resume


def _control_callback(run_state: RunState) -> Any:
    """A TrainerCallback that applies RunState's decisions at step ends."""
    from transformers import TrainerCallback

    class RunControl(TrainerCallback):
        """Stops and saves for time budgets, signals and divergence; saves every N minutes."""

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            # A resumed run keeps the schedule it was fitted to (its checkpoint's scheduler state assumes it).
            if run_state.schedule_steps is not None and state.max_steps != run_state.schedule_steps:
                from finetune.schedule_fit import refit_scheduler

                run_state.planned_steps = state.max_steps
                refit_scheduler(kwargs["lr_scheduler"], kwargs["optimizer"], run_state.schedule_steps)
                run_state.apply_schedule(state, run_state.schedule_steps)
            elif state.global_step > 0:
                # A resume with another --max-steps (a completed run trained further) changes the schedule's
                # length: the checkpoint's optimizer still holds the old schedule's rate for the next step.
                from finetune.schedule_fit import refit_scheduler

                refit_scheduler(kwargs["lr_scheduler"], kwargs["optimizer"], state.max_steps)
            # The first line's throughput counts from here and from the step and tokens the run resumes at:
            # a resumed session has not trained the earlier sessions' tokens.
            run_state.telemetry.begin_training(state.global_step, int(state.num_input_tokens_seen or 0))
            return control

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            reason = run_state.should_stop(state.global_step, state.max_steps)
            if reason is None and run_state.fit_to_budget and fit_due(len(run_state.step_times)):
                run_state.fit_schedule(args, state, kwargs["lr_scheduler"], kwargs["optimizer"],
                                       run_state.eval_batches)
            reason = agree_on_stop(reason)
            if reason is not None:
                run_state.status = reason
                control.should_training_stop = True
                control.should_save = reason != "diverged"
            if control.should_training_stop:
                # The last step is logged whatever logging_steps says (every rank alike: the stop is agreed):
                # train_loss in summary.json, the console's "train loss" and `finetune runs`' final loss are
                # then where training ended, not an earlier logging step's (step 1's, at a warm-up rate of 0).
                control.should_log = True
            self._skip_evaluation_when_stopping(control)
            minutes = run_state.recipe.training.save_minutes
            if minutes and time.monotonic() - run_state.last_save >= minutes * 60:
                control.should_save = True
            return control

        def on_epoch_end(self, args, state, control, **kwargs):  # noqa: ANN001
            # A stop leaves the epoch loop early, and transformers still ends the epoch: with eval_steps unset
            # (eval_strategy "epoch") DefaultFlowCallback, called before us, has just asked for an evaluation
            # of the whole held-out split before the stop saves. That took 66 s after a Ctrl-C and ran a 100 s
            # budget to 143 s in review; docs/runs.md promises a stop saves at once.
            self._skip_evaluation_when_stopping(control)
            return control

        @staticmethod
        def _skip_evaluation_when_stopping(control: Any) -> None:
            # interrupted and time_budget report the last evaluation, diverged none (save_outcome): one due
            # now would spend the time the stop is for. A completed run still evaluates at its end.
            if run_state.status != "completed":
                control.should_evaluate = False

    return RunControl()


# training.learning_rate: auto. Measured on the bundled 135M model (scripts/sweep.py, docs/compare.md "Choosing
# the learning rate"): 1e-3 for one epoch beat 3e-4 for three on voice at equal answer quality, and the old 2e-4
# default left the voice weak. Above SMALL_MODEL_PARAMS nothing was measured here (no GPU): 2e-4 is the LoRA rate
# most peers ship for 1B-70B models, and a larger model's updates move more per step.
SMALL_MODEL_PARAMS = 1_000_000_000
AUTO_LEARNING_RATE = {"small": 1.0e-3, "large": 2.0e-4}


def choose_learning_rate(setting: float | str, parameters: int) -> float:
    """The recipe's learning rate, or for `auto` the one for a base model of this many parameters."""
    if setting != "auto":
        return float(setting)
    return AUTO_LEARNING_RATE["small" if parameters < SMALL_MODEL_PARAMS else "large"]


def training_arguments(
    recipe: Recipe, checkpoints_dir: Path, precision: str, device: str, checkpointing: bool,
    max_steps: int | None, has_eval: bool, learning_rate: float,
) -> Any:
    """transformers TrainingArguments from the recipe and the hardware choices."""
    import importlib.util

    from transformers import TrainingArguments

    t = recipe.training
    report_to = [] if recipe.tracking.wandb == "disabled" else ["wandb"]
    liger = device == "cuda" and importlib.util.find_spec("liger_kernel") is not None
    eval_strategy = "no" if not has_eval else ("steps" if t.eval_steps else "epoch")
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        torch_compile=t.compile,
        num_train_epochs=t.epochs,
        max_steps=max_steps or t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of total steps in transformers 5
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        report_to=report_to,
        run_name=recipe.name,
        disable_tqdm=True,
        dataloader_pin_memory=device == "cuda",
        ddp_find_unused_parameters=False,
        # Liger's Triton kernels (RMSNorm, RoPE, SwiGLU) on CUDA when installed; its fused linear cross-entropy
        # stays off because compute_loss already builds logits only at labelled positions.
        use_liger_kernel=liger,
        liger_kernel_config={"fused_linear_cross_entropy": False} if liger else None,
    )


def configure_wandb(recipe: Recipe, run_dir: Path) -> None:
    """wandb through the trainer's integration: offline by default, files inside the run folder."""
    if recipe.tracking.wandb == "disabled":
        return
    os.environ.setdefault("WANDB_MODE", recipe.tracking.wandb)
    os.environ["WANDB_DIR"] = str(run_dir.resolve())
    os.environ.setdefault("WANDB_PROJECT", recipe.tracking.project)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_LOG_MODEL", "false")


def finish_wandb(recipe: Recipe) -> None:
    """Close the wandb run so its offline folder is complete now, not at interpreter exit."""
    if recipe.tracking.wandb == "disabled":
        return
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception:  # tracking trouble must never cost a run its adapter
        pass


@contextmanager
def stop_on_signals(run_state: RunState) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM mean "finish this step, save, stop"; the old handlers come back after."""
    previous = _install_signal_handlers(run_state)
    try:
        yield
    finally:
        _restore_signal_handlers(previous)


def _install_signal_handlers(run_state: RunState) -> dict[int, Any]:
    """First SIGINT/SIGTERM: stop after this step and save. A second one: exit at once."""
    previous: dict[int, Any] = {}

    first_at: list[float] = []

    def handler(signum: int, frame: Any) -> None:
        if run_state.signal_received is not None:
            # Under `accelerate launch` a terminal Ctrl-C reaches each rank twice within milliseconds
            # (from the terminal, then passed on by the launcher): that is still the first request.
            if time.monotonic() - first_at[0] < 2.0:
                return
            os._exit(128 + signum)
        run_state.signal_received = signum
        first_at.append(time.monotonic())
        if run_state.telemetry.is_main:  # every rank stops; one says so
            print(f"\nsignal {signum}: finishing this step, then saving (again to quit at once)", flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. a test runner thread)
            pass
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    """Put the earlier handlers back."""
    for sig, old in previous.items():
        signal.signal(sig, old)
