"""The plan: a recipe's verdict, time and cost per target, tied to its dataset and the catalogues."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune import catalog as cat
from finetune.cost import convert, display_currency, run_cost
from finetune.errors import RecipeError
from finetune.estimate.assumptions import Assumptions, assumptions
from finetune.estimate.calibration import compare_probe, learned_from_run, remember_speed, remembered_speed
from finetune.estimate.devices import (
    Device,
    device_for_gpu,
    packed_layouts,
    peak_after,
    run_setups,
    setup_for,
    this_machine,
)
from finetune.estimate.memory import (
    STRATEGIES,
    Memory,
    Setup,
    fits,
    largest_fitting,
    lora_params,
    max_batch_size,
    max_seq_len,
    memory,
    suggestions,
)
from finetune.estimate.shape import ModelShape, model_shape
from finetune.estimate.speed import flops_per_token, seconds_per_micro_batch
from finetune.estimate.tokens import Tokens, count_tokens, padded_tokens

if TYPE_CHECKING:
    from finetune.data import Conversation
    from finetune.recipe import Recipe


@dataclass
class GpuRow:
    """One target's verdict: fits, largest batch and sequence, time, cost, and what to change."""

    name: str
    memory_gb: float
    fits: bool
    total_gb: float
    hours: float
    cost: dict[str, Any]
    max_batch_size: int
    max_seq_len: int
    precision: str
    gradient_checkpointing: bool
    seconds_per_step: float
    utilisation: float
    num_gpus: int
    strategy: str
    suggestions: list[str] = field(default_factory=list)
    this_machine: bool = False
    memory: Memory | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON view of the row."""
        data = {k: v for k, v in asdict(self).items() if k != "memory"}
        data["per_gpu"] = self.memory.to_dict() if self.memory else None
        data["hours"] = round(self.hours, 4)
        data["total_gb"] = round(self.total_gb, 3)
        data["seconds_per_step"] = round(self.seconds_per_step, 4)
        if data["cost"].get("amount") is not None:
            data["cost"]["amount"] = round(data["cost"]["amount"], 4)
        return data


@dataclass
class Estimate:
    """The whole answer of `finetune estimate`."""

    recipe_name: str
    model: ModelShape
    trainable_params: int
    setup: Setup
    memory: Memory
    memory_target: str
    tokens: Tokens
    epochs: float
    max_steps: int | None  # training.max_steps, which ends the run before its epochs do
    compute_tokens: int
    steps: int
    rows: list[GpuRow]
    hosted: list[dict[str, Any]]
    currency: str
    assumptions: Assumptions
    probe: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None  # this machine's factors: from a probe or a finished run here
    packed: bool = False  # training packs rows: `setup` is the largest packed batch, its lines x their width
    max_time_s: float | None = None  # training.max_time: the run ends inside it whatever the rows' time says
    fit_to_budget: bool = False

    @property
    def total_training_tokens(self) -> int:
        """Tokens trained on over the run: its epochs, or what max_steps' batches hold."""
        return self.compute_tokens if self.max_steps else int(self.tokens.per_epoch * self.epochs)

    def to_json(self) -> dict[str, Any]:
        """The documented `--json` schema (docs/estimate.md)."""
        return {
            "recipe": self.recipe_name,
            "model": {"name": self.model.name, "params": self.model.params,
                      "trainable_params": self.trainable_params, "architecture": self.model.architecture,
                      "layers": self.model.layers, "hidden_size": self.model.hidden,
                      "vocab_size": self.model.vocab, "licence": self.model.licence,
                      "source": self.model.source},
            "setup": {**asdict(self.setup), "packed": self.packed},
            "memory": {**self.memory.to_dict(), "target": self.memory_target},
            "tokens": {**self.tokens.to_dict(), "epochs": self.epochs, "compute_tokens": self.compute_tokens,
                       "total_training_tokens": self.total_training_tokens,
                       "steps": self.steps},
            "gpus": [row.to_dict() for row in self.rows],
            "hosted_apis": self.hosted,
            "currency": self.currency,
            "max_time_s": self.max_time_s,
            "fit_to_budget": self.fit_to_budget,
            "probe": self.probe,
            "calibration": self.calibration,
            "assumptions": self.assumptions.model_dump(include={
                "utilisation", "cpu_utilisation", "quantised_slowdown", "scaling_efficiency", "power_fraction",
                "cuda_context_gb", "allocator_margin"}),
        }


def _catalogue_gpu(name: str) -> cat.GPU | None:
    """The catalogue GPU a recipe's `cost.gpu` names, or None for a free-form label like 'cpu-2core'."""
    try:
        return cat.find_gpu(name, cat.load_gpus())
    except cat.CatalogError:
        return None


def _same_gpu(name: str, gpu: cat.GPU) -> bool:
    """Whether a user's GPU name means this catalogue entry."""
    return cat.normalise_gpu_name(name) in [cat.normalise_gpu_name(n) for n in [gpu.name, *gpu.aliases]]


def _row_cost(recipe: Recipe, device: Device, seconds: float, num_gpus: int, currency: str,
              rates: cat.Rates, a: Assumptions) -> dict[str, Any]:
    """A row's cost: the recipe's price for its own GPU, electricity for consumer cards, else rental."""
    section = recipe.cost
    if device.this_machine:
        # The recipe's price is for this machine unless it names a catalogue GPU this machine is not.
        named = section.gpu is not None and _catalogue_gpu(section.gpu) is not None
        own = not named or (device.gpu is not None and _same_gpu(section.gpu, device.gpu))
    else:
        own = section.gpu is not None and device.gpu is not None and _same_gpu(section.gpu, device.gpu)
    if own and (section.hourly_rate or section.electricity):
        # The recipe's cost.power_w is what its own machine draws under load: use it as is.
        power, share = (section.power_w, 1.0) if section.power_w else (device.power_w, a.power_fraction)
        result = run_cost(section, seconds, gpu_power_w=power, utilisation=share,
                          to_currency=currency, num_gpus=num_gpus, rates=rates)
        return {**result, "price": "recipe"}
    if section.electricity and device.gpu is not None and device.gpu.kind == "consumer":
        electricity = {"electricity": section.electricity.model_dump()}
        result = run_cost(electricity, seconds, gpu_power_w=device.power_w, utilisation=a.power_fraction,
                          to_currency=currency, num_gpus=num_gpus, rates=rates)
        return {**result, "price": "recipe"}
    if device.gpu is not None and device.gpu.rental is not None:
        rate = {"hourly_rate": {"amount": device.gpu.rental.usd_per_hour, "currency": "USD"}}
        result = run_cost(rate, seconds, to_currency=currency, num_gpus=num_gpus, rates=rates)
        return {**result, "price": "catalogue", "price_as_of": device.gpu.rental.as_of}
    return {"amount": None, "currency": currency, "basis": "none", "estimated": False}




def _row(recipe: Recipe, shape: ModelShape, device: Device, tokens: Tokens, num_gpus: int, strategy: str,
         currency: str, rates: cat.Rates, a: Assumptions, speed_factor: float = 1.0,
         memory_factor: float = 1.0, once_seconds: float = 0.0, limits: bool = True) -> GpuRow:
    """Estimate one target (`speed_factor`, `memory_factor`: measured over predicted, from a probe or a run;
    `once_seconds`: paid once per run, a compiled run's first step as a compiled run here measured it;
    `limits`: find the largest batch and sequence, which a packed recipe pays for in layouts: 0 without)."""
    t = recipe.training
    setup, average = run_setups(recipe, device, tokens, num_gpus, strategy, shape)
    mem = memory(shape, setup, a)
    # A run here that peaked at memory_factor x its prediction (of what the run measures: on CUDA, without the
    # driver's context): this one's measured part scales alike, and its limits shrink by the whole's ratio.
    scaled = mem.scaled_gb(memory_factor)
    capacity = device.capacity_gb / (scaled / mem.total_gb if mem.total_gb > 0 else memory_factor)
    ok = fits(mem, capacity)
    util = a.utilisation if device.kind == "cuda" else a.cpu_utilisation
    peak = device.peak_tflops.get(setup.precision) or device.peak_tflops["fp32"]
    micro, _ = _work(recipe, tokens)
    per_micro = seconds_per_micro_batch(shape, average, peak, util, a) * speed_factor
    eff = a.scaling_efficiency.of(strategy) if setup.num_gpus > 1 else 1.0
    eval_seconds = _eval_seconds(recipe, shape, average, tokens, peak, util) * speed_factor
    util /= speed_factor
    seconds = (per_micro * micro + eval_seconds) / (setup.num_gpus * eff) + once_seconds
    cost = _row_cost(recipe, device, seconds, setup.num_gpus, currency, rates, a)

    def peak_at(**changes: Any) -> Setup:
        """The run's largest step after a recipe change, laid out as training would (packed or not)."""
        return peak_after(recipe, device, tokens, shape, **{"num_gpus": num_gpus, "strategy": strategy, **changes})

    max_batch, max_seq = _limits(recipe, shape, device, tokens, setup, capacity, a, peak_at) if limits else (0, 0)
    return GpuRow(
        name=device.name, memory_gb=round(device.memory_gb, 2), fits=ok, total_gb=scaled,
        hours=seconds / 3600, cost=cost, max_batch_size=max_batch, max_seq_len=max_seq,
        precision=setup.precision, gradient_checkpointing=setup.checkpointing,
        seconds_per_step=per_micro * t.gradient_accumulation, utilisation=util,
        num_gpus=setup.num_gpus, strategy=strategy if setup.num_gpus > 1 else "none",
        suggestions=[] if ok else suggestions(shape, setup, capacity, t.gradient_accumulation, a,
                                              batch_size=t.batch_size, peak_at=peak_at,
                                              memory_gb=device.memory_gb),
        this_machine=device.this_machine, memory=mem,
    )


def _limits(recipe: Recipe, shape: ModelShape, device: Device, tokens: Tokens, setup: Setup, capacity: float,
            a: Assumptions, peak_at: Callable[..., Setup]) -> tuple[int, int]:
    """(largest training.batch_size, longest dataset.max_length) that fit `capacity`, other settings the recipe's.

    Checkpointing as training would run those limits: `auto` on CUDA turns it on for a step that would not fit
    easily without it (devices._without_needless_checkpointing), and it never holds more than without, so the
    limits under `auto` are those with it on, even where the recipe's own step runs without; an explicit
    true/false, or a CPU (where `auto` is off), as resolved.
    The longest max_length is the one at which batch_size rows all that long fit: no batch holds more positions,
    packed or not (a packed batch lays out about batch_size rows' worth), so any max_length up to it fits
    whatever the rows. The largest batch_size: unpacked, that many rows of the run's longest row; packed, found by
    laying the epoch out again per batch size, as training would.
    """
    t = recipe.training
    on = device.kind == "cuda" and t.gradient_checkpointing == "auto"
    limit = replace(setup, checkpointing=True) if on else setup
    max_seq = max_seq_len(shape, replace(limit, batch=t.batch_size), capacity, a)
    if not packed_layouts(recipe, shape, device, tokens):
        return max_batch_size(shape, limit, capacity, a), max_seq

    def fits_at(batch: int) -> bool:
        step = peak_at(batch_size=batch)
        return fits(memory(shape, replace(step, checkpointing=True) if on else step, a), capacity)

    # Each try lays an epoch out (0.1-1 s at 20k rows), so start near the answer: a packed batch's lines grow
    # about as its batch_size does, and larger batches pack a little better (20k short rows, 2026-12-05: the
    # recipe's lines scaled up read 10-16% low on every catalogue card; scaled again from the layout at that
    # guess, within 1 row of the answer, which then takes 2-3 more layouts).
    batch, lines = t.batch_size, setup
    for _ in range(2):
        fitting_lines = max_batch_size(shape, replace(lines, checkpointing=True) if on else lines, capacity, a)
        guess = max(1, fitting_lines * batch // max(1, lines.batch))
        if guess == batch:
            break
        batch, lines = guess, peak_at(batch_size=guess)
    return largest_fitting(fits_at, batch, min(4096, max(1, tokens.rows_train))), max_seq


def _work(recipe: Recipe, tokens: Tokens) -> tuple[int, int]:
    """(micro-batches, padded tokens computed) over the whole run.

    A micro-batch is batch_size rows, packed or not (a packed run's largest batch has another number of lines).
    """
    t = recipe.training
    padded, _ = padded_tokens(tokens.lengths, t.batch_size, t.group_by_length, t.seed)
    micro_per_epoch = max(1, math.ceil(tokens.rows_train / t.batch_size))
    if t.max_steps:
        micro = t.max_steps * t.gradient_accumulation
        return micro, int(padded / micro_per_epoch * micro)
    micro = math.ceil(micro_per_epoch * t.epochs)
    return micro, int(padded * t.epochs)


def _steps(recipe: Recipe, micro_batches: int) -> int:
    """Optimizer steps of a run of `micro_batches` micro-batches (_work's first figure)."""
    return math.ceil(micro_batches / recipe.training.gradient_accumulation)


def _eval_seconds(recipe: Recipe, shape: ModelShape, setup: Setup, tokens: Tokens, peak: float,
                  util: float) -> float:
    """Forward-only evaluation passes: one per epoch (a third of a training step's work per token)."""
    if not tokens.eval_lengths:
        return 0.0
    t = recipe.training
    passes = max(1, math.ceil(t.epochs))
    if t.max_steps:  # one evaluation per epoch begun, and one at the end
        passes = max(1, math.ceil(t.max_steps * t.gradient_accumulation * setup.batch / max(1, tokens.rows_train)))
    work = sum(tokens.eval_lengths) * passes * flops_per_token(shape, replace(setup, checkpointing=False)) / 3
    return work / (peak * 1e12 * util)


def hosted_rows(total_tokens: int, params: int, currency: str, rates: cat.Rates) -> list[dict[str, Any]]:
    """What the same training tokens cost on hosted fine-tuning services (reference rows)."""
    out = []
    for api in cat.load_hosted_apis():
        if not api.covers(params) and (api.min_params_b is not None or api.max_params_b is not None):
            continue
        amount = total_tokens / 1e6 * api.price_per_million_tokens
        out.append({"name": api.name, "amount": round(convert(amount, api.currency, currency, rates), 4),
                    "currency": currency, "price_per_million_tokens": api.price_per_million_tokens,
                    "price_currency": api.currency, "as_of": api.as_of, "source": api.source})
    return out


def _sort_key(row: GpuRow) -> tuple[int, int, float, float]:
    """Fitting rows first, cheapest first (rows without a price after priced ones), then fastest."""
    amount = row.cost.get("amount")
    return (0 if row.fits else 1, 0 if amount is not None else 1, amount or 0.0, row.hours)


def check_options(recipe: Recipe, strategy: str | None, num_gpus: int, gpu: str | None = None) -> str:
    """The multi-GPU strategy to plan for (the recipe's unless given); RecipeError for bad options."""
    strategy = strategy or recipe.distributed.multi_process_strategy
    if strategy not in STRATEGIES:
        raise RecipeError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if num_gpus < 1:
        raise RecipeError("--gpus: expected 1 or more")
    if gpu is not None and not gpu.strip():
        # An empty name would otherwise fall through to this machine, as if --gpu had not been given.
        raise RecipeError(f"--gpu {gpu!r}: expected a catalogue GPU (e.g. 4090, 'A100 80GB') or 'all'")
    return strategy


def _check_gpu_count(num_gpus: int, devices: list[Device], recipe: Recipe, tokens: Tokens) -> None:
    """RecipeError where `--gpus N` cannot mean what it says: no GPU to multiply, or more than the rows feed."""
    if num_gpus == 1:
        return
    if not any(d.kind == "cuda" for d in devices):
        # A CPU row is planned as one process whatever N is: say so rather than print a row that ignored it.
        raise RecipeError(f"--gpus {num_gpus}: this machine has no GPU to multiply; name one with --gpu "
                          f"(e.g. --gpu 4090 --gpus {num_gpus})")
    batch = recipe.training.batch_size
    batches = max(1, math.ceil(tokens.rows_train / batch))
    if num_gpus > batches:
        # Each GPU takes its own batch every step: past this count the extra GPUs have no rows of their own.
        make = "makes" if tokens.rows_train == 1 else "make"
        raise RecipeError(f"--gpus {num_gpus}: {counted(tokens.rows_train, 'training row')} {make} "
                          f"{counted(batches, 'batch', 'batches')} of {batch} (training.batch_size); more GPUs "
                          f"than that have nothing to train on (at most {batches})")


def estimate(recipe: Recipe, gpu: str | None = None, num_gpus: int = 1, strategy: str | None = None,
             probe: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
             catalog_file: str | Path | None = None, recipe_dir: Path | None = None) -> Estimate:
    """Plan a recipe: memory by component, verdict per GPU (or all), hours, cost and hosted-API reference.

    `probe`: steps measured on this machine (finetune.train.run_probe's dict), or the function that measures
    them, called once the options are known to be sound (a probe takes minutes; a bad --gpus should not wait
    for it): compared with the prediction, and its speed factor stored for later estimates here.
    """
    a = assumptions()
    strategy = check_options(recipe, strategy, num_gpus, gpu)
    shape = model_shape(recipe.base_model, catalog_file, recipe.trust_remote_code)
    gpus = cat.load_gpus(catalog_file)
    rates = cat.load_rates()
    currency = display_currency(recipe.cost)
    convert(1.0, currency, "USD", rates)  # fail early on an unknown display currency
    tokens = count_tokens(recipe, recipe_dir, a)
    devices: list[Device] = []
    if gpu and gpu.lower() == "all":
        devices = [device_for_gpu(g, a) for g in gpus]
    elif gpu:
        devices = [device_for_gpu(cat.find_gpu(gpu, gpus), a)]
    elif recipe.cost.gpu:
        try:
            devices = [device_for_gpu(cat.find_gpu(recipe.cost.gpu, gpus), a)]
        except cat.CatalogError:
            devices = []  # a label for the user's own machine (e.g. "cpu-2core"): priced as this machine
    machine = this_machine(gpus, a) if not gpu or probe is not None or gpu.lower() == "all" else None
    _check_gpu_count(num_gpus, [*devices, *([machine] if machine else [])], recipe, tokens)
    probe_info = calibration = None
    if callable(probe):
        probe = probe()
    if probe is not None:
        probe_info = compare_probe(recipe, shape, machine, probe, tokens, a)
        calibration = remember_speed(probe_info["speed_factor"], recipe.name)
    if machine is not None:
        devices.append(machine)
        # Only this machine's row is scaled: by this probe, else a finished run like this one, else a probe.
        calibration = calibration or _learned(recipe, shape, machine, tokens) or remembered_speed()
    factors = _factors(calibration)
    rows = [_row(recipe, shape, d, tokens, num_gpus, strategy, currency, rates, a,
                 *(factors if d.this_machine else (1.0, 1.0, 0.0))) for d in devices]
    if gpu and gpu.lower() == "all":
        rows.sort(key=_sort_key)
    # The memory breakdown shown is for the recipe's own GPU: the catalogue GPU its cost.gpu names, or
    # this machine when cost.gpu is a label of the user's own (e.g. "cpu-2core"); else the first row.
    named = _catalogue_gpu(recipe.cost.gpu) if recipe.cost.gpu else None
    if named is not None:
        primary = next((r for r in rows if r.name == named.name), rows[0])
    elif recipe.cost.gpu:
        primary = next((r for r in rows if r.this_machine), rows[0])
    else:
        primary = rows[0]
    primary_device = next(d for d in devices if d.name == primary.name)
    micro, compute = _work(recipe, tokens)
    primary_setup, _ = run_setups(recipe, primary_device, tokens, num_gpus, strategy, shape)
    total_tokens = int(tokens.per_epoch * recipe.training.epochs)
    if recipe.training.max_steps:
        total_tokens = compute
    return Estimate(
        recipe_name=recipe.name,
        model=shape,
        trainable_params=lora_params(shape, recipe.lora.r, recipe.lora.target_modules),
        setup=primary_setup,
        memory=primary.memory,
        memory_target=primary.name,
        tokens=tokens,
        epochs=recipe.training.epochs,
        max_steps=recipe.training.max_steps,
        compute_tokens=compute,
        steps=_steps(recipe, micro),
        rows=rows,
        hosted=hosted_rows(total_tokens, shape.params, currency, rates),
        currency=currency,
        assumptions=a,
        probe=probe_info,
        calibration=calibration,
        packed=bool(packed_layouts(recipe, shape, primary_device, tokens)),
        max_time_s=recipe.training.max_time,
        fit_to_budget=recipe.training.fit_to_budget,
    )


def budget_text(max_time_s: float | None, fit_to_budget: bool, hours: float, steps: int) -> str | None:
    """What the recipe's max_time does to a run predicted to take `hours` (None without one): a user reading
    "11 min" for a recipe that stops at 4 should not have to know that it stops."""
    if max_time_s is None:
        return None
    from finetune.telemetry import format_duration

    budget = f"max_time {format_duration(max_time_s)}"
    if hours * 3600 <= max_time_s:
        return f"{budget}: the predicted time fits inside it"
    done = max(1, int(steps * max_time_s / (hours * 3600)))
    if fit_to_budget:
        return (f"{budget}: fit_to_budget ends the schedule inside it, after about {done} of the {steps} steps "
                "at this speed")
    return f"{budget}: training stops (and saves) when it runs out, after about {done} of the {steps} steps"


def counted(n: float, noun: str, plural: str | None = None) -> str:
    """'1 epoch', '3 epochs', '2.5 epochs', '1,200 training rows': a count and its noun, plural unless one."""
    text = f"{n:,}" if isinstance(n, int) else f"{n:g}"
    return f"{text} {noun if n == 1 else plural or noun + 's'}"


def _length_text(recipe: Recipe, tokens: Tokens) -> str:
    """How long the run is: its epochs, or training.max_steps where that ends it."""
    if recipe.training.max_steps:
        return (f"{counted(recipe.training.max_steps, 'optimizer step')} (max_steps) of {tokens.per_epoch:,} "
                f"tokens/epoch")
    return f"{tokens.per_epoch:,} tokens/epoch x {counted(recipe.training.epochs, 'epoch')}"


def estimate_for_training(recipe: Recipe, gpu_name: str | None = None,
                          conversations: list[Conversation] | None = None) -> tuple[list[str], bool]:
    """Two short lines (memory vs the device; hours and cost) and whether the run fits, for training.

    `conversations`: the dataset's rows training has already read (counted, not read again).
    """
    a = assumptions()
    shape = model_shape(recipe.base_model, None, recipe.trust_remote_code)
    gpus = cat.load_gpus()
    device = device_for_gpu(cat.find_gpu(gpu_name, gpus), a) if gpu_name else this_machine(gpus, a)
    tokens = count_tokens(recipe, None, a, conversations)
    currency = display_currency(recipe.cost)
    strategy = recipe.distributed.multi_process_strategy
    world = int(os.environ.get("WORLD_SIZE", "1"))
    calibration = (_learned(recipe, shape, device, tokens) or remembered_speed()) if device.this_machine else None
    # Training's two lines name no limits: spare a packed recipe the layouts they cost (~1 s each at 20k rows).
    row = _row(recipe, shape, device, tokens, world, strategy, currency, cat.load_rates(), a, *_factors(calibration),
               limits=False)
    where = "available RAM" if device.kind == "cpu" else "GPU memory"
    verdict = "fits" if row.fits else "does NOT fit"
    line1 = (f"memory: {row.total_gb:.1f} GB predicted peak vs {device.capacity_gb:.1f} GB usable {where} "
             f"on {device.name}: {verdict}")
    from finetune.cost import format_money

    cost = row.cost
    money = format_money(cost.get("amount"), cost.get("currency", currency))
    basis = f" ({cost['basis']})" if cost.get("basis") not in (None, "none") else ""
    line2 = f"time: about {_hours_text(row.hours)} for {_length_text(recipe, tokens)}; cost: {money}{basis}"
    budget = budget_text(recipe.training.max_time, recipe.training.fit_to_budget, row.hours,
                         _steps(recipe, _work(recipe, tokens)[0]))
    if budget and "fits inside" not in budget:
        line2 += f"; {budget}"
    if calibration and calibration["source"] == "run":
        kind = "compiled run" if calibration.get("compile") else "run"
        once = calibration.get("first_step_extra_s")
        compiling = f", +{once:.0f} s compiling" if once else ""
        memory_from = f" from run '{Path(calibration['memory_from']).name}'" if calibration.get("memory_from") else ""
        line2 += (f"; learned from {kind} '{Path(calibration['run']).name}' of "
                  f"{str(calibration['measured_at'])[:10]} (time x{calibration['speed_factor']:.2f}, "
                  f"memory x{calibration['memory_factor']:.2f}{memory_from}{compiling})")
    elif calibration:
        line2 += f"; speed calibrated by the probe of {calibration['measured_at'][:10]}"
    else:
        line2 += "; rough until a finished run or `finetune estimate --probe` has measured this machine"
    if not row.fits and row.suggestions:
        line1 += f"; try {row.suggestions[0]}"
    return [line1, line2], row.fits


def _learned(recipe: Recipe, shape: ModelShape, device: Device, tokens: Tokens) -> dict[str, Any] | None:
    """The finished run on this machine that calibrates this recipe (same model, precision, quantisation and
    checkpointing, as `auto` resolves here)."""
    setup = setup_for(recipe, device)
    checkpointing = run_setups(recipe, device, tokens, shape=shape)[0].checkpointing
    return learned_from_run(shape.name, setup.precision, setup.bits, checkpointing, setup.seq,
                            compiled=recipe.training.compile, tokens_per_step=tokens_per_step(recipe, tokens))


def tokens_per_step(recipe: Recipe, tokens: Tokens) -> float:
    """Non-padding tokens per optimizer step, as a run's metrics count them: an epoch's tokens over its optimizer
    steps (a micro-batch is batch_size rows; an epoch's last step takes the micro-batches left, fewer than
    gradient_accumulation when the data is small)."""
    t = recipe.training
    micro_per_epoch = max(1, math.ceil(tokens.rows_train / t.batch_size))
    return tokens.per_epoch / max(1, math.ceil(micro_per_epoch / t.gradient_accumulation))


def checkpointing_here(recipe: Recipe, conversations: list[Conversation] | None = None) -> bool:
    """What `gradient_checkpointing: auto` resolves to for this recipe on this machine (finetune.train's choice).

    On a CPU: off (compute-bound, and no GPU memory to save). On CUDA: off where the largest step without it
    is predicted to fit easily (devices.run_setups), else on.
    """
    a = assumptions()
    shape = model_shape(recipe.base_model, None, recipe.trust_remote_code)
    device = this_machine(cat.load_gpus(), a)
    tokens = count_tokens(recipe, None, a, conversations)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    peak, _ = run_setups(recipe, device, tokens, world, recipe.distributed.multi_process_strategy, shape)
    return peak.checkpointing


def _factors(calibration: dict[str, Any] | None) -> tuple[float, float, float]:
    """(speed factor, memory factor, seconds paid once) of a calibration record (a probe measures no memory
    factor; only a compiled run's record has a first step's extra seconds, its compiling)."""
    if not calibration:
        return 1.0, 1.0, 0.0
    return (float(calibration["speed_factor"]), float(calibration.get("memory_factor") or 1.0),
            float(calibration.get("first_step_extra_s") or 0.0))


def _hours_text(hours: float) -> str:
    """'3 min', '2.4 h', '5.1 days'."""
    if hours < 1:
        return f"{max(hours * 60, 0.1):.1f} min" if hours * 60 < 10 else f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


hours_text = _hours_text
