"""The training path, top to bottom: recipe → data → model → LoRA → Trainer → adapter → summary."""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from finetune import atomic, hardware
from finetune.data import collate, file_sha256, load_conversations, split_train_eval, tokenize_conversations
from finetune.distributed import effective_strategy, peak_over_ranks, save_sharded_adapter
from finetune.errors import RunError
from finetune.models import load_config, load_model, load_tokenizer
from finetune.recipe import Recipe
from finetune.runs import (
    CHECKPOINTS,
    LEDGER_FILE,
    build_summary,
    latest_checkpoint,
    prepare_run_dir,
    remove_incomplete_checkpoints,
    run_dir_for,
    trim_metrics,
)
from finetune.telemetry import Ledger, Telemetry

# Longest padded batch that uses the matmul attention kernel on a CPU in bf16 (see attention_kernels).
MATH_ATTENTION_MAX_WIDTH = 160
STATUS_EXIT = {"completed": 0, "time_budget": 0, "interrupted": 130, "diverged": 3, "failed": 1}


def deadline_from_until(until: str, now: datetime | None = None) -> float:
    """Seconds from now until the next local wall-clock time 'HH:MM' (tomorrow if already past)."""
    now = now or datetime.now()
    try:
        hours, minutes = (int(x) for x in until.split(":"))
        target = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    except ValueError:
        raise RunError(f"--until {until!r}: expected a local time like 07:00") from None
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()


def lora_config(recipe: Recipe) -> Any:
    """peft's LoraConfig from the recipe's lora section."""
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_peft_model(recipe: Recipe, precision: str, device: str, checkpointing: bool) -> Any:
    """Load the base (quantised for QLoRA) and wrap it with fresh LoRA adapters."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = load_model(recipe, precision, device)
    if recipe.quantization.bits is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    model = get_peft_model(model, lora_config(recipe))
    if device == "cpu" and precision == "bf16":
        keep_frozen_weights_in_bf16(model)
    return model


def keep_frozen_weights_in_bf16(model: Any) -> None:
    """On a CPU training in bf16: every frozen weight in bf16, LoRA's own weights left in fp32.

    models.load_model already loads a 16-bit base in bf16; this catches what prepare_model_for_kbit_training
    upcast to fp32 for QLoRA (embedding, norms, which would make every activation fp32), and stops peft from
    casting each LoRA input up to fp32 (so dropout would draw and keep fp32 noise) when autocast runs LoRA's
    matmuls in bf16 anyway. Measured in docs/bench.md: ~10% faster steps and ~25% less peak memory than fp32
    frozen weights under autocast, the same held-out loss. GPUs keep peft's and bitsandbytes' usual dtypes.
    """
    import torch

    for param in model.parameters():
        if not param.requires_grad and param.dtype == torch.float32:
            param.data = param.data.to(torch.bfloat16)
    # peft's input casting is switched off around each forward (compute_loss) with its public helper.


def attention_kernels(cpu_bf16: bool, width: int, checkpointing: bool) -> Any:
    """torch's matmul attention for short bf16 batches on a CPU; its default kernel choice otherwise."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    # On a CPU in bf16 the flash-attention kernel was ~1.7x slower than the matmul path up to ~160 tokens
    # (forward and backward; a 9% faster step on the bundled model, docs/bench.md). The matmul path keeps the
    # L x L attention weights for backward, so longer batches stay on flash; checkpointing would recompute
    # outside this context, with the other kernel.
    if cpu_bf16 and width <= MATH_ATTENTION_MAX_WIDTH and not checkpointing:
        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


def _trainer_class() -> type:
    """The Trainer subclass, built lazily so importing this module does not import transformers."""
    import torch
    import torch.nn.functional as F
    from peft.helpers import disable_input_dtype_casting
    from transformers import Trainer
    from transformers.trainer_pt_utils import get_length_grouped_indices
    from transformers.trainer_utils import rotate_checkpoints

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

        loss_is_scaled_for_ga = True  # compute_loss already divides by the accumulated token count

        def __init__(self, *args: Any, run_state: RunState, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.run_state = run_state

        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return EpochSeededLengthSampler(lengths, self.args.per_device_train_batch_size, self.args.data_seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            labels = inputs.pop("labels")
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
            logits = outputs.logits.float()
            picked = targets[:, keep]
            total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), picked.reshape(-1), reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else (picked != -100).sum()
            loss = total / torch.clamp(torch.as_tensor(count, device=total.device), min=1)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
            if model.training:
                self.run_state.observe_loss(loss.detach(), self.state.global_step + 1)
            return (loss, outputs) if return_outputs else loss

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

    def should_stop(self, step: int) -> str | None:
        """The reason to stop after this step, if any (decided identically on every rank)."""
        now = time.monotonic()
        self.step_times.append(now - self.last_step_end)
        if self.first_step_s is None:
            self.first_step_s = now - self.session_start
        self.last_step_end = now
        if self.signal_received is not None:
            return "interrupted"
        if self.non_finite_steps >= self.recipe.training.divergence_patience:
            return "diverged"
        if self.budget_s is not None:
            recent = self.step_times[-5:]
            step_s = max(recent) if recent else 0.0
            # Leave room for one more step plus saving the adapter and a checkpoint.
            # (A checkpoint and the adapter cost about one save each; the summary and plot a few seconds.)
            margin = 1.5 * step_s + 2 * max(self.save_seconds, 2.0) + 3.0
            if now - self.session_start + margin >= self.budget_s:
                return "time_budget"
        return None


def _control_callback(run_state: RunState) -> Any:
    """A TrainerCallback that applies RunState's decisions at step ends."""
    from transformers import TrainerCallback

    class RunControl(TrainerCallback):
        """Stops and saves for time budgets, signals and divergence; saves every N minutes."""

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            reason = run_state.should_stop(state.global_step)
            reason = _agree_across_ranks(reason)
            if reason is not None:
                run_state.status = reason
                control.should_training_stop = True
                control.should_save = reason != "diverged"
            minutes = run_state.recipe.training.save_minutes
            if minutes and time.monotonic() - run_state.last_save >= minutes * 60:
                control.should_save = True
            return control

    return RunControl()


_REASONS = [None, "time_budget", "interrupted", "diverged"]


def _agree_across_ranks(reason: str | None) -> str | None:
    """Every rank must stop at the same step, or collective ops deadlock: take the most severe reason."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return reason
    from finetune.distributed import reduce_max

    return _REASONS[int(reduce_max([_REASONS.index(reason)])[0])]


def training_arguments(
    recipe: Recipe, checkpoints_dir: Path, precision: str, device: str, checkpointing: bool,
    max_steps: int | None, has_eval: bool,
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
        num_train_epochs=t.epochs,
        max_steps=max_steps or t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
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


def train(
    recipe: Recipe,
    *,
    output_dir: str | Path | None = None,
    max_steps: int | None = None,
    force: bool = False,
    resume: bool = False,
    until: str | None = None,
    say: Any = print,
    return_model: bool = False,
    callbacks: list[Any] | None = None,
) -> Any:
    """Train a LoRA adapter from a recipe; returns the run summary (also written to summary.json).

    With `return_model`, returns (summary, trained PEFT model) so tests can compare it with the saved adapter.
    `callbacks` are extra transformers TrainerCallbacks (custom logging, fault injection in tests).
    """
    from accelerate import PartialState

    started = datetime.now().astimezone()
    began = time.monotonic()
    # Under torchrun on a CPU, ask for the CPU (gloo) group, or every rank would think it runs alone.
    dist_state = PartialState(cpu=hardware.detect().device == "cpu")
    is_main = dist_state.is_main_process

    # 0. Check everything the user can get wrong before anything is written.
    conversations = load_conversations(recipe.dataset.path, recipe.dataset.format)
    load_config(recipe)  # the model exists and needs no remote code unless the recipe allows it
    if recipe.cost.gpu:
        from finetune.catalog import find_gpu, load_gpus

        find_gpu(recipe.cost.gpu, load_gpus())  # an unknown GPU name fails now, not at the first log line
    budget_until = deadline_from_until(until) if until else None
    if is_main and not resume:
        _check_it_fits(recipe, force, say)
    # Only the main process checks and creates the folder: the others would find it half-made.
    run_dir = (prepare_run_dir(recipe, output_dir, force=force, resume=resume, is_main=is_main)
               if is_main else run_dir_for(recipe, output_dir))
    dist_state.wait_for_everyone()

    # 1. Hardware decides precision and checkpointing unless the recipe fixes them.
    hw = hardware.detect()
    device = hw.device
    precision = hardware.choose_precision(recipe.training.precision, hw)
    checkpointing = hardware.choose_checkpointing(recipe.training.gradient_checkpointing, hw)
    num_processes = dist_state.num_processes
    global_batch = recipe.training.batch_size * recipe.training.gradient_accumulation * num_processes
    if is_main:
        say(
            f"run {run_dir}  device {device} ({hw.name})  precision {precision}  "
            f"checkpointing {'on' if checkpointing else 'off'}  processes {num_processes}  "
            f"global batch {recipe.training.batch_size}x{recipe.training.gradient_accumulation}x{num_processes}"
            f"={global_batch}"
        )

    # 2. Data: validated rows, the deterministic held-out split, chat-template tokenisation with masks.
    tokenizer = load_tokenizer(recipe)
    train_rows, eval_rows = split_train_eval(conversations, recipe.dataset.eval_fraction, recipe.training.seed)
    train_ds = tokenize_conversations(tokenizer, train_rows, recipe.dataset.max_length)
    eval_ds = tokenize_conversations(tokenizer, eval_rows, recipe.dataset.max_length) if eval_rows else None
    if eval_ds is not None and len(eval_ds) == 0:
        eval_ds = None  # every held-out row was truncated to no labels: nothing to evaluate

    # 3. Model: base (4-bit for QLoRA) plus LoRA.
    import torch

    torch.manual_seed(recipe.training.seed)
    model = build_peft_model(recipe, precision, device, checkpointing)

    # 4. Trainer with our loss, telemetry and run control.
    checkpoints_dir = run_dir / CHECKPOINTS
    resume_from = None
    telemetry = Telemetry(recipe, run_dir, device, hw.name, num_processes=num_processes, is_main=is_main)
    if resume:
        remove_incomplete_checkpoints(checkpoints_dir) if is_main else None
        resume_from = latest_checkpoint(checkpoints_dir)
        if resume_from is None:
            raise RunError(f"{run_dir}: no checkpoint to resume from (start without --resume)")
        telemetry.ledger = Ledger.load(resume_from / LEDGER_FILE)
        if is_main:
            trim_metrics(run_dir / "metrics.jsonl", int(resume_from.name.split("-")[-1]))
            say(f"resuming from {resume_from}")
    budgets = [b for b in (recipe.training.max_time, budget_until) if b]
    run_state = RunState(recipe, telemetry, min(budgets) if budgets else None, session_start=began)
    args = training_arguments(
        recipe, checkpoints_dir, precision, device, checkpointing, max_steps, eval_ds is not None
    )
    _configure_wandb(recipe, run_dir)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=partial(collate, pad_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[_control_callback(run_state), *(callbacks or [])],
        run_state=run_state,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # our telemetry prints progress
    trainer.remove_callback(ProgressCallback)

    # 5. Train, with SIGINT/SIGTERM turned into "finish this step, save, stop".
    previous = _install_signal_handlers(run_state)
    error: BaseException | None = None
    try:
        telemetry.start_progress(0)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BaseException as exc:  # the summary must say what happened, whatever happened
        error = exc
        run_state.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        run_state.message = f"{type(exc).__name__}: {exc}"
    finally:
        telemetry.stop_progress()
        _restore_signal_handlers(previous)

    # 6. Save the adapter (from the last good checkpoint if training diverged), evaluate, summarise.
    eval_loss = None
    if run_state.status == "diverged":
        run_state.message = (
            f"loss was not finite for {run_state.non_finite_steps} steps from step {run_state.first_bad_step}; "
            f"try a lower learning_rate than {recipe.training.learning_rate:g}"
        )
    if error is None and run_state.status != "diverged" and eval_ds is not None:
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        if evals and (evals[-1].get("step") == trainer.state.global_step or run_state.status != "completed"):
            eval_loss = evals[-1]["eval_loss"]  # a stopped run saves now rather than spend time evaluating
        elif run_state.status == "completed":
            eval_loss = trainer.evaluate().get("eval_loss")
    saved_by_ranks = False  # FSDP/DeepSpeed shard the weights: all ranks gather them to save
    if run_state.status != "diverged" and (error is None or run_state.status == "interrupted"):
        saved_by_ranks = save_sharded_adapter(trainer, run_dir / "adapter")
    _finish_wandb(recipe)  # after the last evaluation, which wandb logs too
    if is_main:
        adapter_dir = run_dir / "adapter"
        if run_state.status == "diverged":
            good = latest_checkpoint(checkpoints_dir)
            if good is not None:
                _copy_adapter(good, adapter_dir, tokenizer)
        elif (error is None or run_state.status == "interrupted") and not saved_by_ranks:
            _save_adapter(trainer.model, tokenizer, adapter_dir)
        summary = build_summary(
            recipe=recipe, run_dir=run_dir, run_state=run_state, telemetry=telemetry,
            trainer_state=trainer.state, hw=hw, precision=precision, checkpointing=checkpointing,
            num_processes=num_processes, strategy=effective_strategy(recipe.distributed.strategy, num_processes),
            eval_loss=eval_loss, started=started, dataset_sha256=file_sha256(recipe.dataset.path),
            train_rows=len(train_rows), eval_rows=len(eval_rows),
        )
        atomic.write_json(run_dir / "summary.json", summary)
        _plot_curves(run_dir)
    dist_state.wait_for_everyone()
    if error is not None and not isinstance(error, KeyboardInterrupt):
        raise error
    result = summary if is_main else {"status": run_state.status}
    return (result, trainer.model) if return_model else result


def _check_it_fits(recipe: Recipe, force: bool, say: Any) -> None:
    """Print the estimate in two lines; refuse a run it says cannot fit, unless --force."""
    from finetune.errors import FinetuneError
    from finetune.estimate import estimate_for_training

    try:
        lines, fits = estimate_for_training(recipe)
    except FinetuneError:
        raise
    except Exception as exc:  # an estimate we cannot make must not stop a run that may well work
        say(f"estimate: not available for this model ({type(exc).__name__}: {exc})")
        return
    for line in lines:
        say(f"estimate: {line}")
    if not fits and not force:
        raise RunError(f"{recipe.name}: the estimate says this run does not fit ({lines[0]}); "
                       "change the recipe or pass --force to try anyway")


def _save_adapter(model: Any, tokenizer: Any, adapter_dir: Path) -> None:
    """Save the PEFT adapter and tokenizer atomically (the previous adapter stays until the new one is whole)."""
    with atomic.staged_dir(adapter_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


def _copy_adapter(checkpoint: Path, adapter_dir: Path, tokenizer: Any) -> None:
    """Use a checkpoint's adapter as the run's adapter (after divergence)."""
    with atomic.staged_dir(adapter_dir) as staging:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(checkpoint / name, staging / name)
        tokenizer.save_pretrained(staging)


def _configure_wandb(recipe: Recipe, run_dir: Path) -> None:
    """wandb through the trainer's integration: offline by default, files inside the run folder."""
    if recipe.tracking.wandb == "disabled":
        return
    os.environ.setdefault("WANDB_MODE", recipe.tracking.wandb)
    os.environ["WANDB_DIR"] = str(run_dir.resolve())
    os.environ.setdefault("WANDB_PROJECT", recipe.tracking.project)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_LOG_MODEL", "false")


def _finish_wandb(recipe: Recipe) -> None:
    """Close the wandb run so its offline folder is complete now, not at interpreter exit."""
    if recipe.tracking.wandb == "disabled":
        return
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception:  # tracking trouble must never cost a run its adapter
        pass


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


def _plot_curves(run_dir: Path) -> None:
    """curves.png: loss and eval loss, learning rate and throughput over steps."""
    from finetune.plots import plot_curves

    try:
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    except Exception as exc:  # a plot must never cost the run its summary
        print(f"warning: curves.png not written: {exc}")


def run_probe(recipe: Recipe, steps: int = 4) -> dict[str, Any]:
    """Run a few real training steps through the real training path and measure them."""
    import tempfile

    probe = recipe.model_copy(deep=True)
    probe.training.logging_steps = 1
    probe.training.save_steps = 10**9
    probe.training.save_minutes = None
    probe.tracking.wandb = "disabled"
    with tempfile.TemporaryDirectory(prefix="finetune-probe-") as tmp:
        summary = train(probe, output_dir=Path(tmp) / "probe", max_steps=steps + 1, say=lambda *_: None)
        records = [r for r in atomic.read_jsonl(Path(tmp) / "probe" / "metrics.jsonl") if r["step"] > 1]
    timed = [r for r in records if r.get("loss") is not None] or records
    seconds = sum(r["seconds_per_step"] for r in timed) / max(1, len(timed))
    tokens = (timed[-1]["tokens"] - records[0]["tokens"]) / max(1, timed[-1]["step"] - records[0]["step"]) \
        if len(timed) > 1 else summary["tokens"] / max(1, summary["steps"])
    return {
        "seconds_per_step": seconds,
        "tokens_per_step": tokens,
        "peak_memory_mb": summary["peak_memory_mb"],
        "precision": summary["precision"],
        "device": summary["hardware"]["device"],
        "gradient_checkpointing": summary["gradient_checkpointing"],
    }
