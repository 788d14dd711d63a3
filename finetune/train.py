"""The training path, top to bottom: recipe → data → model → LoRA → Trainer → adapter → summary."""

from __future__ import annotations

import dataclasses
import errno
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from finetune import atomic, hardware
from finetune.allocator import keep_freed_memory
from finetune.data import (
    dropped_text,
    empty_split_text,
    load_conversations,
    prompt_mismatch,
    save_tokenizer,
    split_train_eval,
    tokenize_with_drops,
)
from finetune.errors import DataError, RecipeError, RunError
from finetune.models import load_config, load_model, load_tokenizer
from finetune.packing import check_recipe as check_packing
from finetune.rank import save_sharded_adapter
from finetune.recipe import Recipe
from finetune.resume import (
    check_same_run,
    checkpoint_is_final,
    finished_summary,
    pick_checkpoint,
    restore_final,
    saved_recipe,
)
from finetune.runlock import RunLock
from finetune.runs import (
    CHECKPOINTS,
    LEDGER_FILE,
    build_summary,
    latest_checkpoint,
    prepare_run_dir,
    read_summary,
    remove_incomplete_checkpoints,
    run_dir_for,
    trim_metrics,
)
from finetune.telemetry import Ledger, PhaseMemory, Telemetry
from finetune.trainer import (
    RunState,
    build_trainer,
    choose_learning_rate,
    configure_wandb,
    finish_wandb,
    stop_on_signals,
    training_arguments,
)


def deadline_from_until(until: str, now: datetime | None = None) -> float:
    """Seconds from now until the next local wall-clock time 'HH:MM' (tomorrow if already past)."""
    now = now or datetime.now()
    try:
        hours, minutes = (int(x) for x in until.split(":"))
        target = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    except ValueError:
        raise RunError(f"--until {until!r}: expected a local time HH:MM, like 07:00") from None
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()


def time_budget_s(max_time: float | None, until: str | None, now: datetime | None = None) -> float | None:
    """The run's time budget in seconds: the sooner of the recipe's max_time and --until (None: no limit)."""
    budgets = [b for b in (max_time, deadline_from_until(until, now) if until else None) if b]
    return min(budgets) if budgets else None


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
    if device == "cpu":
        from finetune.cpu_dropout import use_cpu_dropout

        use_cpu_dropout(model)  # torch's per-element Bernoulli draws cost a CPU step as much as its matmuls
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


def train(
    recipe: Recipe,
    *,
    output_dir: str | Path | None = None,
    max_steps: int | None = None,
    force: bool = False,
    resume: bool = False,
    until: str | None = None,
    say: Callable[[str], None] = print,
    callbacks: list[Any] | None = None,
    learn: bool = True,
) -> dict[str, Any]:
    """Train a LoRA adapter from a recipe; returns the run summary (also written to summary.json).

    `callbacks` are extra transformers TrainerCallbacks (custom logging, fault injection, and tests that
    take the trained model from on_train_end). `learn=False` keeps the run out of the estimate's record of
    this machine (the probe stores its own measurement instead).
    """
    if max_steps is not None and max_steps < 1:
        # 0 would read as "no limit" further down (`max_steps or ...`) and train every epoch.
        raise RunError(f"--max-steps {max_steps}: expected a positive number of steps")
    if max_steps is not None:
        recipe = _with_max_steps(recipe, max_steps)  # the run's own: in recipe.yaml, its card, a later --resume
    elif resume:
        recipe = _with_run_max_steps(recipe, run_dir_for(recipe, output_dir))
    lock = RunLock(run_dir_for(recipe, output_dir))  # one train per run folder, held until we return
    try:
        return _train(recipe, lock, output_dir=output_dir, max_steps=max_steps, force=force, resume=resume,
                      until=until, say=say, callbacks=callbacks, learn=learn)
    finally:
        lock.release()


def _train(
    recipe: Recipe, lock: RunLock, *, output_dir: str | Path | None, max_steps: int | None, force: bool,
    resume: bool, until: str | None, say: Callable[[str], None], callbacks: list[Any] | None, learn: bool,
) -> dict[str, Any]:
    """The run, top to bottom (train() holds the run folder's lock around it)."""
    from accelerate import PartialState

    started = datetime.now().astimezone()
    began = time.monotonic()
    # Under torchrun on a CPU, ask for the CPU (gloo) group, or every rank would think it runs alone.
    dist_state = PartialState(cpu=hardware.detect().device == "cpu")
    is_main = dist_state.is_main_process

    # 0. Check everything the user can get wrong before anything is written.
    conversations = load_conversations(recipe.dataset.path, recipe.dataset.format)
    config = load_config(recipe)  # the model exists and needs no remote code unless the recipe allows it
    check_packing(recipe, config.model_type)  # packing: true where it cannot be exact fails now
    if recipe.cost.gpu:
        from finetune.catalog import find_gpu, load_gpus

        find_gpu(recipe.cost.gpu, load_gpus())  # an unknown GPU name fails now, not at the first log line
    if recipe.training.compile:
        blocker = hardware.compile_blocker(hardware.detect().device)
        if blocker:
            raise RecipeError(f"training.compile: {blocker}; set training.compile: false")
    budget_s = time_budget_s(recipe.training.max_time, until)
    if is_main:
        # A folder another train is using is refused first: advice about what it holds would send the user
        # to --force or --resume, which the lock refuses too. (An absent folder is locked once created.)
        lock.acquire(create=False)
    if is_main and not resume:
        # A folder it may not use is refused before the estimate is printed (this only checks; nothing written).
        prepare_run_dir(recipe, output_dir, force=force, resume=False, is_main=False)
        _check_it_fits(recipe, force, say, conversations)  # --max-steps is in the recipe (train())
    if is_main:
        lock.acquire(create=not resume)  # a second train on this folder stops here, before touching it
    done = finished_summary(run_dir_for(recipe, output_dir), recipe.training.max_steps) \
        if resume else None
    if done is not None:
        say(f"{run_dir_for(recipe, output_dir)}: already completed ({done['steps']} steps); nothing to do")
        return done
    # Only the main process checks and creates the folder: the others would find it half-made.
    run_dir = (prepare_run_dir(recipe, output_dir, force=force, resume=resume, is_main=is_main)
               if is_main else run_dir_for(recipe, output_dir))
    dataset_sha256 = conversations.sha256  # hashed once, when the file was read
    resume_from = None
    metrics_before: str | None = None  # metrics.jsonl before a resume trims it, put back if nothing trains
    if resume:
        if is_main:
            remove_incomplete_checkpoints(run_dir / CHECKPOINTS)
        resume_from = pick_checkpoint(run_dir / CHECKPOINTS, say if is_main else lambda _: None)
        if resume_from is None:
            raise RunError(f"{run_dir}: no checkpoint to resume from (start without --resume)")
        # Same recipe and data as the run began with, or --force: refused before anything is written.
        check_same_run(run_dir, recipe, dataset_sha256, resume_from, force, say if is_main else lambda _: None)
    if is_main:
        lock.mark()
    dist_state.wait_for_everyone()

    # 1. Hardware decides precision and checkpointing unless the recipe fixes them.
    hw = hardware.detect()
    device = hw.device
    precision = hardware.choose_precision(recipe.training.precision, hw)
    checkpointing = hardware.choose_checkpointing(recipe.training.gradient_checkpointing, hw)
    if checkpointing and recipe.training.gradient_checkpointing == "auto":
        checkpointing = _checkpointing_by_memory(recipe, conversations)
    num_processes = dist_state.num_processes
    global_batch = recipe.training.batch_size * recipe.training.gradient_accumulation * num_processes
    if is_main:
        say(
            f"run {run_dir}  device {device} ({hw.name})  precision {precision}  "
            f"checkpointing {'on' if checkpointing else 'off'}  processes {num_processes}  "
            f"global batch {recipe.training.batch_size}x{recipe.training.gradient_accumulation}x{num_processes}"
            f"={global_batch}"
        )

    # Peak memory per phase (load, train, eval, save) for summary.json: loading is data and model.
    phases = PhaseMemory(device)
    phases.start("load")

    # 2. Data: validated rows, the deterministic held-out split, chat-template tokenisation with masks.
    tokenizer = load_tokenizer(recipe)
    train_rows, eval_rows = split_train_eval(conversations, recipe.dataset.eval_fraction, recipe.training.seed)
    max_length = recipe.dataset.max_length
    train_ds, train_dropped = tokenize_with_drops(tokenizer, train_rows, max_length)
    eval_ds, eval_dropped = tokenize_with_drops(tokenizer, eval_rows, max_length) if eval_rows else (None, [])
    if len(train_ds) == 0:  # the estimate refuses this before anything is written; a resumed run meets it here
        raise DataError(f"{recipe.dataset.path}: {dropped_text(train_dropped, len(train_rows), max_length)}")
    if is_main:
        for lines, rows, what in ((train_dropped, train_rows, "training"), (eval_dropped, eval_rows, "held-out")):
            if lines:
                say(f"data: {dropped_text(lines, len(rows), max_length, f'{what} rows dropped')}")
        empty = empty_split_text(len(conversations), recipe.dataset.eval_fraction, len(eval_rows))
        if empty:
            say(f"data: {empty}")
        mismatch = prompt_mismatch(tokenizer)
        if mismatch:
            say(f"warning: {mismatch}")
    if eval_ds is not None and len(eval_ds) == 0:
        eval_ds = None  # every held-out row was truncated to no labels: nothing to evaluate

    # 3. Model: base (4-bit for QLoRA) plus LoRA.
    import torch

    torch.manual_seed(recipe.training.seed)
    model = build_peft_model(recipe, precision, device, checkpointing)

    # 4. Trainer with our loss, telemetry and run control.
    checkpoints_dir = run_dir / CHECKPOINTS
    telemetry = Telemetry(recipe, run_dir, device, hw.name, num_processes=num_processes, is_main=is_main,
                          phases=phases, start=began)
    if resume_from is not None:
        telemetry.ledger = Ledger.load(resume_from / LEDGER_FILE)
        telemetry.ledger.carry_summary(read_summary(run_dir))  # the earlier sessions' time after the checkpoint
        if is_main:
            metrics_before = trim_metrics(run_dir / "metrics.jsonl", int(resume_from.name.split("-")[-1]))
            say(f"resuming from {resume_from}")
    telemetry.ledger.extra["dataset_sha256"] = dataset_sha256  # in every checkpoint, for --resume to check
    started = telemetry.ledger.run_started(started)  # summary.json's started_at: the run's first session's
    run_state = RunState(recipe, telemetry, budget_s, session_start=began)
    fitted = int(telemetry.ledger.extra.get("schedule_steps") or 0) if resume_from is not None else 0
    if fitted and max_steps is not None and max_steps > fitted:
        # --max-steps past the schedule an earlier budget fitted (a completed run trained further): asked for.
        del telemetry.ledger.extra["schedule_steps"]
    elif fitted:
        run_state.schedule_steps = fitted  # fitted to an earlier budget
        run_state.fit_checked = True  # kept, and only shortened should the new budget be tighter
        run_state.may_grow = False
    parameters = model.get_nb_trainable_parameters()[1]  # peft counts 4-bit weights at their full size
    learning_rate = choose_learning_rate(recipe.training.learning_rate, parameters)
    run_state.learning_rate = learning_rate
    if is_main and recipe.training.learning_rate == "auto":
        say(f"learning rate {learning_rate:g} (auto, for a base of {parameters / 1e6:,.0f}M parameters)")
    args = training_arguments(
        recipe, checkpoints_dir, precision, device, checkpointing, max_steps, eval_ds is not None, learning_rate
    )
    configure_wandb(recipe, run_dir)
    # A resumed run's recipe.yaml changes only once its checkpoint has loaded (_recipe_on_load).
    recipe_file = _recipe_on_load(run_dir / "recipe.yaml", recipe) if resume_from is not None and is_main else None
    trainer = build_trainer(model, args, train_ds, eval_ds, tokenizer, run_state,
                            [phases.callback(), *([recipe_file] if recipe_file else []), *(callbacks or [])])
    if run_state.packing.enabled and device == "cpu" and keep_freed_memory():
        # Packed steps allocate the same sizes every step: glibc keeps what one frees for the next (allocator.py).
        run_state.packing = dataclasses.replace(run_state.packing, memory_kept=True)
    if is_main:
        say(f"packing {run_state.packing.describe()}")
    # transformers would train one step past max_steps when resumed from the last one: finish instead.
    final = resume_from is not None and checkpoint_is_final(resume_from, run_state.schedule_steps or args.max_steps)

    # 5. Train, with SIGINT/SIGTERM turned into "finish this step, save, stop". The handlers stay through
    #    step 6: a signal while evaluating or saving lets the save finish and is recorded, never kills it.
    error: BaseException | None = None
    phases.start("train")
    with stop_on_signals(run_state):
        try:
            telemetry.start_progress(0)
            if final:
                if is_main:
                    say(f"{resume_from.name} holds the last step: finishing the run without training")
                restore_final(trainer, resume_from, atomic.read_jsonl(run_dir / "metrics.jsonl"))
                if recipe_file is not None:
                    recipe_file.save()
            else:
                trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except BaseException as exc:  # the summary must say what happened, whatever happened
            error = exc
            run_state.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run_state.message = f"{type(exc).__name__}: {exc}{_disk_full_hint(exc)}{_out_of_memory_hint(exc)}"
        finally:
            telemetry.stop_progress()

        # 6. The outcome decides what is kept: the final evaluation, the adapter (the last good checkpoint's
        #    after divergence, none after a crash); then the summary says what happened.
        eval_loss = save_outcome(trainer, run_state, error, run_dir, tokenizer, evaluate=eval_ds is not None)
        finish_wandb(recipe)  # after the last evaluation, which wandb logs too
        if run_state.signal_received is not None and run_state.status == "completed":
            run_state.message = (f"signal {run_state.signal_received} arrived after the last step; the "
                                 "evaluation, adapter and summary were finished first")
        # A resume that failed before training a step (a checkpoint this model cannot load, say) leaves the
        # run's record as it was: its summary and recipe.yaml still describe the last session that trained.
        untouched = (resume_from is not None and run_state.status == "failed" and error is not None
                     and trainer.state.global_step <= int(resume_from.name.rsplit("-", 1)[-1]))
        if untouched and recipe_file is not None:
            recipe_file.restore()
        if untouched and is_main and metrics_before is not None:
            atomic.write_text(run_dir / "metrics.jsonl", metrics_before)  # the lines past the checkpoint too
        if is_main and not untouched:
            summary = build_summary(
                recipe=recipe, run_dir=run_dir, run_state=run_state, telemetry=telemetry,
                trainer_state=trainer.state, hw=hw, precision=precision, checkpointing=checkpointing,
                num_processes=num_processes, strategy=recipe.distributed.effective_strategy(num_processes),
                eval_loss=eval_loss, started=started, dataset_sha256=dataset_sha256,
                train_rows=len(train_ds), eval_rows=len(eval_ds) if eval_ds is not None else 0,
            )
            _write_summary(run_dir, summary)
            _plot_curves(run_dir)
            if learn:
                from finetune.estimate.calibration import record_run
                record_run(summary, recipe, run_dir)  # the next estimate on this machine learns from this run
    dist_state.wait_for_everyone()
    if untouched:
        raise RunError(f"{run_dir}: cannot resume from {resume_from.name}: {_first_line(error)}; recipe.yaml and "
                       "summary.json are as they were (--debug shows the traceback)") from error
    # A full disk is described in the summary (status failed, how to recover): no traceback for it.
    if error is not None and not isinstance(error, KeyboardInterrupt) and not _disk_full_hint(error):
        hint = _out_of_memory_hint(error)
        if hint:  # the recipe asks for more memory than there is: one line, not a traceback
            raise RunError(f"{run_dir}: out of memory at step {trainer.state.global_step + 1}{hint}; "
                           "summary.json records it (--debug shows the traceback)") from error
        raise error
    return summary if is_main else {"status": run_state.status}


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line: torch's state-dict errors run to hundreds of lines."""
    lines = str(exc).strip().splitlines() or [""]
    text = f"{type(exc).__name__}: {lines[0].rstrip(':')}"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text + (f" (and {len(lines) - 1} more lines)" if len(lines) > 1 else "")


def _recipe_on_load(path: Path, recipe: Recipe) -> Any:
    """A TrainerCallback that writes a resumed run's recipe.yaml once the checkpoint has loaded.

    transformers calls on_train_begin after the checkpoint's weights, optimizer and scheduler are in. Written
    before (as it was), a checkpoint that would not load left recipe.yaml naming a recipe that never trained,
    and the original one was then refused on the next --resume.
    """
    from transformers import TrainerCallback

    class RecipeOnLoad(TrainerCallback):
        def __init__(self) -> None:
            self.previous = path.read_text(encoding="utf-8") if path.is_file() else None
            self.written = False

        def save(self) -> None:
            atomic.write_text(path, recipe.to_yaml())  # what runs from now on
            self.written = True

        def restore(self) -> None:
            if self.written and self.previous is not None:
                atomic.write_text(path, self.previous)
                self.written = False

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (transformers' hook)
            self.save()

    return RecipeOnLoad()


def _disk_full_hint(exc: BaseException) -> str:
    """For a full disk, what to do about it (appended to the run's message); '' for any other error."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "; the disk is full: free some space, then run again with --resume (what was saved is intact)"
    return ""


def _out_of_memory_hint(exc: BaseException) -> str:
    """For an allocation that failed (CUDA's OutOfMemoryError, a CPU allocator's), what to change; '' otherwise.

    (On Linux a CPU run out of memory is more often killed by the kernel: then no Python error is seen at all.)
    """
    import torch

    message = str(exc)
    if not (isinstance(exc, (torch.OutOfMemoryError, MemoryError))
            or (isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message))):
        return ""
    return ("; lower training.batch_size or dataset.max_length, or set training.gradient_checkpointing: true or "
            "quantization.bits: 4 (`finetune estimate RECIPE` shows what fits), then --resume --force continues from "
            "the last checkpoint with the changed recipe")


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json; if the disk is full, a one-line error saying what is kept and how to finish."""
    try:
        atomic.write_json(run_dir / "summary.json", summary)
    except OSError as exc:
        kept = "the adapter and checkpoints are" if (run_dir / "adapter").is_dir() else "the checkpoints are"
        raise RunError(f"{run_dir / 'summary.json'}: not written ({exc.strerror or exc}); {kept} kept; free some "
                       "space, then run again with --resume to write it (nothing is trained again)") from None


def save_outcome(
    trainer: Any, run_state: RunState, error: BaseException | None, run_dir: Path, tokenizer: Any, evaluate: bool
) -> float | None:
    """Step 6: evaluate and save the adapter as the run's status calls for; returns the final eval loss.

    completed / time_budget / interrupted: the trained adapter (interrupted and time_budget skip a fresh
    evaluation and report the last one). diverged: the last good checkpoint's adapter, and a message.
    failed: nothing new is written; an earlier adapter stays as it was.
    """
    eval_loss = None
    if run_state.status == "diverged":
        run_state.message = (
            f"loss was not finite for {run_state.non_finite_steps} steps from step {run_state.first_bad_step}; "
            f"try a lower learning_rate than {run_state.learning_rate:g}"
        )
    if error is None and run_state.status != "diverged" and evaluate:
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        if evals and (evals[-1].get("step") == trainer.state.global_step or run_state.status != "completed"):
            eval_loss = evals[-1]["eval_loss"]  # a stopped run saves now rather than spend time evaluating
        elif run_state.status == "completed" and run_state.signal_received is None:
            run_state.telemetry.phases.start("eval")
            eval_loss = trainer.evaluate().get("eval_loss")
        elif evals:
            eval_loss = evals[-1]["eval_loss"]  # a signal asked to stop: save rather than evaluate
    keep_trained = run_state.status != "diverged" and (error is None or run_state.status == "interrupted")
    run_state.telemetry.phases.start("save")
    try:
        # FSDP/DeepSpeed shard the weights: every rank takes part in gathering them to save.
        saved_by_ranks = keep_trained and save_sharded_adapter(trainer, run_dir / "adapter")
        if trainer.is_world_process_zero():
            adapter_dir = run_dir / "adapter"
            if run_state.status == "diverged":
                good = latest_checkpoint(run_dir / CHECKPOINTS)
                if good is not None:
                    _copy_adapter(good, adapter_dir, tokenizer)
            elif keep_trained and not saved_by_ranks:
                _save_adapter(trainer.model, tokenizer, adapter_dir)
    except OSError as exc:  # a full disk: the staged save failed, the previous adapter/ is untouched
        run_state.status = "failed"
        run_state.message = (f"the adapter was not saved ({type(exc).__name__}: {exc}); adapter/ still holds the "
                             f"previous one{_disk_full_hint(exc) or '; run again with --resume'}")
    return eval_loss


def _with_run_max_steps(recipe: Recipe, run_dir: Path) -> Recipe:
    """On --resume without --max-steps: the max_steps the run began with (its recipe.yaml), where the recipe
    file sets none; a run started with --max-steps 8 resumed without it ended at its checkpoint, "completed"."""
    if recipe.training.max_steps is not None:
        return recipe
    training = (saved_recipe(run_dir) or {}).get("training")  # none: no run there (the resume refuses it later)
    steps = training.get("max_steps") if isinstance(training, dict) else None
    return _with_max_steps(recipe, steps) if isinstance(steps, int) and steps > 0 else recipe


def _with_max_steps(recipe: Recipe, max_steps: int | None) -> Recipe:
    """The recipe as `--max-steps` runs it (for the estimate: a capped run takes less time)."""
    if max_steps is None:
        return recipe
    return recipe.model_copy(update={"training": recipe.training.model_copy(update={"max_steps": max_steps})})


def _checkpointing_by_memory(recipe: Recipe, conversations: list[Any]) -> bool:
    """`gradient_checkpointing: auto` on CUDA: off where the estimate predicts the largest step fits easily
    without it (finetune/estimate/devices.py), on where it does not or cannot tell."""
    from finetune.estimate import checkpointing_here

    try:
        return checkpointing_here(recipe, conversations)
    except Exception:  # an estimate we cannot make must not cost the run its memory saving
        return True


def _check_it_fits(
    recipe: Recipe, force: bool, say: Callable[[str], None], conversations: list[Any] | None = None
) -> None:
    """Print the estimate in two lines; refuse a run it says cannot fit, unless --force."""
    from finetune.errors import FinetuneError
    from finetune.estimate import estimate_for_training

    try:
        lines, fits = estimate_for_training(recipe, conversations=conversations)
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
        save_tokenizer(tokenizer, staging)


def _copy_adapter(checkpoint: Path, adapter_dir: Path, tokenizer: Any) -> None:
    """Use a checkpoint's adapter as the run's adapter (after divergence)."""
    with atomic.staged_dir(adapter_dir) as staging:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(checkpoint / name, staging / name)
        save_tokenizer(tokenizer, staging)


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
        summary = train(probe, output_dir=Path(tmp) / "probe", max_steps=steps + 1, say=lambda *_: None,
                        learn=False)
        records = [r for r in atomic.read_jsonl(Path(tmp) / "probe" / "metrics.jsonl") if r["step"] > 1]
    timed = [r for r in records if r.get("loss") is not None] or records
    seconds = sum(r["seconds_per_step"] for r in timed) / max(1, len(timed))
    tokens = (timed[-1]["tokens"] - records[0]["tokens"]) / max(1, timed[-1]["step"] - records[0]["step"]) \
        if len(timed) > 1 else summary["tokens"] / max(1, summary["steps"])
    return {
        "seconds_per_step": seconds,
        "tokens_per_step": tokens,
        "peak_memory_mb": summary["peak_memory_mb"],
        "steps": summary["steps"],  # packed batches come in a random order: which ones its peak saw
        "precision": summary["precision"],
        "device": summary["hardware"]["device"],
        "gradient_checkpointing": summary["gradient_checkpointing"],
    }
