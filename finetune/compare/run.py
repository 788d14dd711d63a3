"""The compare path, top to bottom: runs, arms, prompt sets, generate, score, statistics, reports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from finetune.compare import CompareError, analysis, breakeven, budget, prompts, quality, stats
from finetune.compare.arms import Arm, parse_arms
from finetune.compare.classifier import StyleClassifier, embedder_path
from finetune.compare.decision import decide
from finetune.compare.decoding import DEFAULT_REPETITION_PENALTY
from finetune.compare.generation import (
    ArmModels,
    GenSettings,
    OutputCache,
    generate_conversations,
    generate_for_arms,
    generate_replies,
    model_identity,
    resolve_dtype,
    with_system,
)
from finetune.compare.likelihood import MC_SCORING, mc_results, reference_log_perplexities
from finetune.compare.metrics import compile_markers, first_last_thirds, marker_hit
from finetune.compare.schema import (
    SCHEMA_VERSION,
    AdapterCost,
    BreakEven,
    Classifier,
    Cost,
    FinetuneCost,
    Price,
    PromptSet,
    Report,
    Settings,
)
from finetune.errors import ModelError, RunError
from finetune.paths import finetune_home, outputs_dir
from finetune.recipe import Recipe, load_recipe
from finetune.runs import library_versions, read_summary, resolve_run
from finetune.telemetry import format_duration

DEFAULT_MC = ("datasets/eval/commonsense_en.jsonl", "datasets/eval/commonsense_ja.jsonl")
PERPLEXITY = "exp(mean negative log-likelihood per assistant token) of each reference; mean over references"


@dataclass
class CompareOptions:
    """Everything `finetune compare` accepts (the CLI fills it; tests build it directly)."""

    recipe_path: Path
    adapters: list[str] = field(default_factory=list)
    arms: str | None = None
    system_prompt: str | None = None  # text, or @FILE
    eval_file: Path | None = None
    samples: int | None = None
    conversations: Path | None = None
    turns: int | None = None
    max_conversations: int | None = None
    long_file: Path | None = None
    max_long: int | None = None
    max_new_tokens: int = 64
    long_max_new_tokens: int = 192
    mc_files: list[Path] | None = None  # None: the bundled commonsense sets when present; []: none
    mc_samples: int | None = 100
    classifier_samples: int = 96
    price: str | None = None
    price_per_mtok: float | None = None
    price_currency: str = "USD"
    out: Path | None = None
    force: bool = False  # replace an earlier compare in --out
    seed: int = 0
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 0.7
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY  # 1.0: plain greedy
    use_cache: bool = True
    cache_dir: Path | None = None  # default $FINETUNE_HOME/compare-cache
    dtype: str = "auto"  # auto: bf16 where the hardware runs it fast (avx512_bf16, AMX, GPUs), else fp32
    max_time: float | None = None  # seconds: shrink the prompt sets to finish in about this long (budget.py)


@dataclass
class Adapter:
    """One adapter run: its label (run folder name), folder and summary."""

    label: str
    run_dir: Path
    summary: dict[str, Any] | None


def run_compare(opts: CompareOptions, say: Callable[[str], None] = print) -> tuple[Path, Report]:
    """Compare the arms and write report.json/md/html and samples.jsonl; returns (folder, report)."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []

    # 1. Recipe, adapters, arms, system prompt.
    recipe = load_recipe(opts.recipe_path)
    adapters = _resolve_adapters(opts, recipe, warnings)
    arms = parse_arms(opts.arms, [a.label for a in adapters])
    used = {arm.adapter for arm in arms if arm.adapter}
    adapters = [a for a in adapters if a.label in used]
    system_prompt, prompt_source = _system_prompt(opts.system_prompt, recipe)
    if any(arm.prompt for arm in arms) and not system_prompt:
        raise CompareError(
            f"{opts.recipe_path}: no system_prompt for the prompt arms; add one or pass --system-prompt"
        )
    from finetune.compare.prices import resolve_price

    price = Price(**resolve_price(opts.price, opts.price_per_mtok, opts.price_currency))  # a typo fails now
    markers = compile_markers(recipe.style.markers)
    if not markers:
        warnings.append("the recipe has no style.markers: marker rates are not measured")

    # 2. Prompt sets: held-out rows (exactly those training never saw) or --eval, plus the optional sets.
    train_rows, held_out = prompts.heldout_split(recipe)
    if opts.eval_file:
        singles = prompts.eval_file_prompts(opts.eval_file, opts.samples)
        single_source = str(opts.eval_file)
    else:
        singles = prompts.heldout_prompts(held_out, opts.samples, recipe.dataset.path)
        single_source = f"{recipe.dataset.path} (held-out rows)"
    multi = (
        prompts.load_multiturn(opts.conversations, opts.turns, opts.max_conversations)
        if opts.conversations
        else []
    )
    longs = prompts.load_long(opts.long_file, opts.max_long) if opts.long_file else []
    mc_sets = {path.stem: (path, prompts.load_mc(path, opts.mc_samples)) for path in _mc_files(opts.mc_files)}
    pairs = prompts.classifier_pairs(train_rows, opts.classifier_samples, opts.seed)
    _check_unique_ids(singles, multi, longs)
    run_name = adapters[0].label if adapters else recipe.name
    run_folder = adapters[0].run_dir if adapters else outputs_dir() / recipe.name
    out_dir = opts.out or run_folder / "compare" / datetime.now().strftime("%Y%m%d-%H%M%S")
    from finetune.compare.report import check_compare_target

    check_compare_target(out_dir, opts.force)  # the folder is written whole at the end (write_outputs)
    say(
        f"compare {', '.join(a.name for a in arms)}: {len(singles)} prompts, {len(multi)} conversations, "
        f"{len(longs)} long prompts, {sum(len(q) for _, q in mc_sets.values())} multiple-choice questions"
    )

    # 3. One base model, every adapter attached by name.
    t0 = time.perf_counter()
    dtype, device = resolve_dtype(opts.dtype)
    models = ArmModels(recipe, {a.label: a.run_dir / "adapter" for a in adapters}, dtype, device)
    tokenizer = models.tokenizer
    settings = GenSettings(
        opts.max_new_tokens,
        opts.long_max_new_tokens,
        opts.batch_size,
        opts.seed,
        opts.do_sample,
        opts.temperature,
        opts.repetition_penalty,
    )
    gen_key = {
        "max_new_tokens": settings.max_new_tokens,
        "long_max_new_tokens": settings.long_max_new_tokens,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "do_sample": settings.do_sample,
        "temperature": settings.temperature if settings.do_sample else None,
        "repetition_penalty": settings.repetition_penalty,
    }
    ppl_key, mc_key = {"max_length": recipe.dataset.max_length}, {"scoring": MC_SCORING}  # scoring's cache settings
    cache_dir = (opts.cache_dir or finetune_home() / "compare-cache") if opts.use_cache else None
    cache = OutputCache(cache_dir, model_identity(recipe, dtype, device))
    timings["load_s"] = time.perf_counter() - t0

    # 3b. A time budget: a few seconds of probing, then every prompt set cut to one shared fraction that fits.
    fitted: dict[str, Any] | None = None
    classifier = StyleClassifier(opts.seed)  # the sentence embedder it loads also scores content kept
    if opts.max_time:
        t0 = time.perf_counter()
        rates = budget.measure(models, arms, [p.messages for p in singles],
                               [p.reference for p in singles if p.reference], recipe.dataset.max_length, settings,
                               classifier.embed)
        timings["budget_probe_s"] = time.perf_counter() - t0

        def cached(what: str, arm: Arm, n: int) -> bool:  # work the cache holds costs nothing
            # The same keys as the steps below compute: generation settings for replies, scoring settings
            # for perplexity and multiple choice.
            if what == "perplexity":
                refs = [(p.id, p.reference) for p in singles[:n] if p.reference]
                return cache.has(what, arm, system_prompt, prompts.content_hash(refs), ppl_key)
            if what.startswith("mc-"):
                name, (_, questions) = list(mc_sets.items())[int(what.removeprefix("mc-"))]
                return cache.has(f"mc-{name}", arm, system_prompt, prompts.content_hash(questions[:n]), mc_key)
            items = {"single": singles, "classifier-base": pairs}[what][:n]
            return cache.has(what, arm, system_prompt, prompts.content_hash(items), gen_key)

        work = budget.plan(models.tokenizer, arms, system_prompt, settings, recipe.dataset.max_length, singles,
                           multi, longs, pairs, [qs for _, qs in mc_sets.values()], cached)
        requested = budget.Sizes(len(singles), len(multi), len(longs),
                                 max((len(q) for _, q in mc_sets.values()), default=0), len(pairs))
        left = opts.max_time - (time.perf_counter() - started)
        # Earlier compares here measured how far the prediction errs, part by part: scale by that.
        learn_key = budget.learning_key(recipe.base_model, dtype)
        factors, learned_from = budget.learned(learn_key)
        sizes, parts = budget.fit(rates, work, requested, left, factors)
        unscaled = budget.predict(rates, work, sizes)  # what the next compare here learns from
        singles, multi, longs, pairs = (singles[: sizes.singles], multi[: sizes.conversations],
                                        longs[: sizes.long], pairs[: sizes.classifier])
        mc_sets = {name: (path, qs[: sizes.mc]) for name, (path, qs) in mc_sets.items()}
        fitted = {"max_time_s": opts.max_time, "probe_s": round(timings["budget_probe_s"], 2),
                  "rates": asdict(rates), "requested": asdict(requested), "fitted": asdict(sizes),
                  "predicted_s": {k: round(v, 1) for k, v in parts.items()},
                  "learned": {"from_compares": learned_from, "factors": {k: round(v, 3) for k, v in factors.items()}}}
        say(_budget_line(opts.max_time, requested, sizes, sum(parts.values()), left, timings["budget_probe_s"],
                         learned_from))
        if sizes != requested:
            warnings.append(f"--max-time {format_duration(opts.max_time)}: prompt sets cut to fit "
                            f"({_cut_text(requested, sizes)}); intervals are wider than the full sets give")
        gone = budget.left_out(requested, sizes)
        if gone:
            names = " and ".join({"long": "long prompts", "conversations": "conversations"}[n] for n in gone)
            warnings.append(f"--max-time {format_duration(opts.max_time)}: {names} left out: even one would not "
                            f"fit (one gives a drift figure, never a verdict)")
        if sum(parts.values()) > left:
            warnings.append(f"--max-time {format_duration(opts.max_time)}: predicted "
                            f"{format_duration(sum(parts.values()))} even at the smallest sets")

    # 4. Generate. Single prompts one arm at a time (their batches time each arm's latency); base and prompt
    # arms come from the cache when an earlier compare computed them.
    replies: dict[str, dict[str, list[dict[str, Any]]]] = {}
    single_msgs = [p.messages for p in singles]
    for arm in arms:
        t0 = time.perf_counter()
        single = partial(generate_replies, models, arm, single_msgs, system_prompt, settings, settings.max_new_tokens)
        replies[arm.name] = {
            "single": cache.get_or_compute(
                "single", arm, system_prompt, prompts.content_hash(singles), gen_key, single
            )
        }
        timings[f"generate_{arm.name}_s"] = time.perf_counter() - t0
        say(f"  {arm.name}: {len(singles)} prompts answered in {timings[f'generate_{arm.name}_s']:.0f} s")
    # Conversations and long answers: every arm in shared batches (PEFT's mixed-adapter batches). A few
    # conversations per arm fill a batch together where each arm alone would decode as many steps at a
    # quarter of the width (the demo: 4 arms x 4 conversations, one batch a turn instead of four). Never
    # cached: which arms share a batch must not depend on what an earlier compare left in the cache.
    t0 = time.perf_counter()
    long_msgs = [[{"role": "user", "content": p.prompt}] for p in longs]
    together = generate_conversations(models, arms, multi, system_prompt, settings)
    long_replies = generate_for_arms(models, arms, long_msgs, system_prompt, settings, settings.long_max_new_tokens)
    for arm in arms:
        replies[arm.name]["multi"] = together[arm.name]
        replies[arm.name]["long"] = long_replies[arm.name]
    timings["generate_shared_s"] = time.perf_counter() - t0
    if multi or longs:
        took = timings["generate_shared_s"]
        say(f"  {len(multi)} conversations and {len(longs)} long prompts, every arm: {took:.0f} s")

    # 5. Style classifier: persona training replies against the base model's replies to the same prompts.
    t0 = time.perf_counter()
    embedded = [classifier.embed_seconds]  # at the start of steps 5 and 6 and at their end: the budget's embed part
    base_arm = Arm("base", None, False)
    pair_msgs = [p.messages for p in pairs]
    base_replies = partial(generate_replies, models, base_arm, pair_msgs, None, settings,
                           settings.max_new_tokens)
    base_train = cache.get_or_compute("classifier-base", base_arm, None, prompts.content_hash(pairs), gen_key,
                                      base_replies)
    # Cut the persona's replies to the generation budget so length and truncation do not give the voice away.
    persona = [_truncate(tokenizer, p.reply, settings.max_new_tokens) for p in pairs]
    info = classifier.fit(persona, [r["text"] for r in base_train])
    timings["classifier_s"] = time.perf_counter() - t0
    embedded.append(classifier.embed_seconds)
    say(
        f"  style classifier: held-out accuracy {stats.format_number(info['accuracy'])} "
        f"({info['n_train']} train / {info['n_test']} test replies)"
    )
    if not info["available"]:
        warnings.append(f"style classifier not trained: {info['reason']}")

    # 6. Score every reply; perplexity of held-out references and multiple choice per arm.
    t0 = time.perf_counter()
    scores: dict[str, dict[str, Any]] = {}
    samples: list[dict[str, Any]] = []
    references = [(p.id, p.reference) for p in singles if p.reference]
    ref_hash = prompts.content_hash(references)
    for arm in arms:
        scores[arm.name] = _score_arm(arm, replies[arm.name], singles, longs, classifier, markers)
        base_replies = replies.get("base") if arm.name != "base" else None
        _add_quality(scores[arm.name], replies[arm.name], base_replies, singles, markers, classifier.embed, settings)
        samples.extend(_samples(run_name, arm, replies[arm.name], singles, longs, scores[arm.name]))
        sent_refs = [with_system(ref, arm, system_prompt) for _, ref in references]
        arm_prompt = system_prompt if arm.prompt else None
        run = partial(cache.get_or_compute, arm=arm, system_prompt=system_prompt)
        with models.use(arm) as model:
            ppl = run("perplexity", items_hash=ref_hash, settings=ppl_key,
                      compute=partial(reference_log_perplexities, model, tokenizer, sent_refs,
                                      recipe.dataset.max_length, settings.batch_size))
            scores[arm.name]["ppl"] = {rid: value for (rid, _), value in zip(references, ppl, strict=True)}
            scores[arm.name]["mc"] = {
                name: run(
                    f"mc-{name}",
                    items_hash=prompts.content_hash(questions),
                    settings=mc_key,
                    compute=partial(mc_results, model, tokenizer, questions, arm_prompt, settings.batch_size),
                )
                for name, (_, questions) in mc_sets.items()
            }
    timings["score_s"] = time.perf_counter() - t0
    embedded.append(classifier.embed_seconds)

    # 7. Statistics: per-arm estimates, paired differences, drift, multiple choice, verdicts.
    names = [a.name for a in arms]
    diffs = analysis.differences(scores, names, list(mc_sets), opts.seed)
    drift = analysis.drift_section(scores, names, opts.seed)
    family = analysis.apply_holm(diffs, drift, names, list(mc_sets))
    arm_metrics = analysis.arm_section(scores, names, opts.seed)
    cost, cost_lines = _cost_section(price, arms, adapters, singles, tokenizer, system_prompt, warnings)
    verdicts = (
        analysis.quality_lines(arm_metrics, names)
        + analysis.verdict_lines(diffs, names, list(mc_sets))
        + analysis.drift_lines(drift)
        + cost_lines
    )
    timings["total_s"] = time.perf_counter() - started
    if fitted is not None:
        measured = {
            "single": sum(timings[f"generate_{a.name}_s"] for a in arms),
            "shared": timings["generate_shared_s"],
            # Embedding (the classifier's fit, the style and content scores) is a part of its own: not cached
            # across compares, it does not shrink with the cache as generation and scoring do.
            "classifier": timings["classifier_s"] - (embedded[1] - embedded[0]),
            "score": timings["score_s"] - (embedded[2] - embedded[1]),
            "embed": embedded[2] - embedded[0],
        }
        fitted["measured_s"] = {k: round(v, 1) for k, v in measured.items()}
        budget.remember(learn_key, unscaled, measured, str((out_dir / "report.json").resolve()))

    def prompt_set(source: str | None, items: list, always_hashed: bool = False) -> PromptSet:
        digest = prompts.content_hash(items) if items or always_hashed else None
        return PromptSet(source=source, n=len(items), hash=digest)

    report = Report(
        schema_version=SCHEMA_VERSION,
        run=run_name,
        created_at=datetime.now().astimezone().isoformat(timespec="seconds"),
        settings=Settings(
            arms=names,
            adapters={a.label: str(a.run_dir) for a in adapters},
            model=recipe.base_model,
            recipe=str(opts.recipe_path),
            system_prompt=system_prompt,
            system_prompt_source=prompt_source,
            seed=opts.seed,
            do_sample=opts.do_sample,
            temperature=opts.temperature if opts.do_sample else None,
            repetition_penalty=opts.repetition_penalty,
            max_new_tokens=opts.max_new_tokens,
            long_max_new_tokens=opts.long_max_new_tokens,
            batch_size=opts.batch_size,
            turns=opts.turns,
            prompt_sets={
                "single": prompt_set(single_source, singles, always_hashed=True),
                "multi": prompt_set(_str(opts.conversations), multi),
                "long": prompt_set(_str(opts.long_file), longs),
                "classifier": prompt_set(f"{recipe.dataset.path} (training rows)", pairs, always_hashed=True),
                **{f"mc:{name}": prompt_set(str(path), qs, always_hashed=True) for name, (path, qs) in mc_sets.items()},
            },
            perplexity=PERPLEXITY,
            bootstrap={
                "resamples": stats.N_BOOT,
                "level": stats.LEVEL,
                "method": "percentile",
                "unit": "prompt (multi-turn: conversation)",
            },
            cache={"folder": str(cache.folder) if cache.folder else None, "hits": cache.hits},
            device=device,
            dtype=dtype,
            versions=library_versions(),
            statistics=analysis.statistics_settings(family),
            # Only with --max-time: a report without a budget keeps the keys it always had.
            **({"budget": fitted} if fitted is not None else {}),
        ),
        arms=arm_metrics,
        differences=diffs,
        drift=drift,
        multiple_choice=analysis.mc_section(
            scores, names, {name: (str(path), len(qs), MC_SCORING) for name, (path, qs) in mc_sets.items()}, opts.seed
        ),
        cost=cost,
        classifier=Classifier(**info, embedder=str(embedder_path())),
        verdicts=verdicts,
        decision=None,  # decided from the report itself, just below
        warnings=warnings,
        timings={k: round(v, 2) for k, v in timings.items()},
    )
    report.decision = decide(report)
    if report.decision is not None:
        say(f"Adapter or prompt? {report.decision.headline}")

    # 8. Write the folder: samples.jsonl (the arena reads it), report.json, report.md, report.html.
    from finetune.compare.report import write_outputs

    write_outputs(out_dir, report, samples)
    return out_dir, report


def _cut_text(requested: budget.Sizes, sizes: budget.Sizes) -> str:
    """'12 of 24 prompts, 2 of 4 conversations, ...' for the sets the budget cut."""
    names = {"singles": "prompts", "conversations": "conversations", "long": "long prompts",
             "mc": "multiple-choice questions per file", "classifier": "classifier replies"}
    return ", ".join(f"{getattr(sizes, k)} of {getattr(requested, k)} {label}" for k, label in names.items()
                     if getattr(sizes, k) != getattr(requested, k))


def _budget_line(
    max_time: float,
    requested: budget.Sizes,
    sizes: budget.Sizes,
    predicted: float,
    left: float,
    probe: float,
    learned_from: int = 0,
) -> str:
    """The console line saying what the time budget decided."""
    learned = f"; corrected by {learned_from} earlier compare{'s' * (learned_from != 1)} here" if learned_from else ""
    head = f"  time budget {format_duration(max_time)} (probe {probe:.0f} s{learned}): "
    if sizes == requested:
        return head + f"every set fits, predicted {format_duration(predicted)} of {format_duration(left)} left"
    over = "" if predicted <= left else " (over the budget even at the smallest sets)"
    return head + f"cut to {_cut_text(requested, sizes)}; predicted {format_duration(predicted)}{over}"


def _str(path: Path | None) -> str | None:
    """A path as text, or None."""
    return str(path) if path else None


def _resolve_adapters(opts: CompareOptions, recipe: Recipe, warnings: list[str]) -> list[Adapter]:
    """The adapter runs: --adapter values, else outputs/<recipe name> when adapter arms are asked for."""
    wanted = list(opts.adapters)
    needs_adapter = opts.arms is None or "adapter" in opts.arms
    if not wanted and needs_adapter:
        default = outputs_dir() / recipe.name
        if (default / "adapter").is_dir():
            wanted = [str(default)]
        elif opts.arms is not None:
            raise CompareError(f"--arms {opts.arms}: adapter arms need --adapter RUN (no run at {default})")
        else:
            raise CompareError(
                f"no adapter: pass --adapter RUN (none at {default}), or --arms base,prompt for prompts only"
            )
    adapters: list[Adapter] = []
    for spec in wanted:
        run_dir = resolve_run(spec)
        if not (run_dir / "adapter" / "adapter_config.json").is_file():
            raise RunError(f"{run_dir}: no adapter/ (did the run finish?)")
        label = run_dir.name
        if any(a.label == label for a in adapters):
            raise CompareError(f"--adapter {spec}: two adapters named {label!r}; rename one run folder")
        run_recipe = run_dir / "recipe.yaml"
        if run_recipe.is_file():
            trained = load_recipe(run_recipe)
            if trained.base_model != recipe.base_model:
                raise ModelError(
                    f"{run_recipe}: adapter trained on {trained.base_model}, but {opts.recipe_path} uses "
                    f"{recipe.base_model}"
                )
            same_split = (trained.dataset.path, trained.dataset.eval_fraction, trained.training.seed) == (
                recipe.dataset.path,
                recipe.dataset.eval_fraction,
                recipe.training.seed,
            )
            if not same_split and opts.eval_file is None:
                warnings.append(
                    f"{label} was trained with another dataset split (dataset.path, eval_fraction or seed) "
                    f"than {opts.recipe_path}: its held-out rows may include rows it was trained on"
                )
        adapters.append(Adapter(label, run_dir, read_summary(run_dir)))
    return adapters


def _system_prompt(flag: str | None, recipe: Recipe) -> tuple[str | None, str]:
    """The persona system prompt: --system-prompt TEXT or @FILE, else the recipe's."""
    if flag is None:
        return recipe.system_prompt, "recipe"
    if flag.startswith("@"):
        path = Path(flag[1:])
        try:
            return path.read_text(encoding="utf-8").strip(), f"file:{path}"
        except OSError as exc:
            raise CompareError(f"--system-prompt {flag}: cannot read {path} ({exc.strerror})") from None
    return flag, "flag"


def _mc_files(files: list[Path] | None) -> list[Path]:
    """--mc files, or the bundled commonsense sets (from the working folder) when present."""
    if files is not None:
        for path in files:
            if not path.is_file():
                raise CompareError(f"--mc {path}: file not found")
        return files
    return [Path(p) for p in DEFAULT_MC if Path(p).is_file()]


def _check_unique_ids(singles: list, multi: list, longs: list) -> None:
    """Prompt ids must not repeat across sets: the arena pairs replies by (prompt_id, turn)."""
    from finetune.errors import DataError

    seen: dict[str, str] = {}
    for kind, items in (("single", singles), ("multi", multi), ("long", longs)):
        for item in items:
            if item.id in seen:
                raise DataError(
                    f"prompt id {item.id!r} is used by both the {seen[item.id]} and the {kind} prompts"
                )
            seen[item.id] = kind


def _truncate(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The first `max_tokens` tokens of a text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return (
        text
        if len(ids) <= max_tokens
        else tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).strip()
    )


def _score_arm(
    arm: Arm,
    replies: dict[str, list[dict[str, Any]]],
    singles: list,
    longs: list,
    classifier: StyleClassifier,
    markers: list,
) -> dict[str, Any]:
    """Per-item scores of one arm: marker hit and style probability per reply, thirds of long answers."""
    single_texts = [r["text"] for r in replies["single"]]
    multi_texts = [r["text"] for r in replies["multi"]]
    long_texts = [r["text"] for r in replies["long"]]
    thirds = [first_last_thirds(t) for t in long_texts]
    styles = classifier.score(single_texts + multi_texts + long_texts + [x for pair in thirds for x in pair])
    n1, n2, n3 = len(single_texts), len(multi_texts), len(long_texts)
    single_style, multi_style = styles[:n1], styles[n1 : n1 + n2]
    long_style, third_style = styles[n1 + n2 : n1 + n2 + n3], styles[n1 + n2 + n3 :]
    single = []
    for prompt, reply, style in zip(singles, replies["single"], single_style, strict=True):
        single.append(
            {
                "prompt_id": prompt.id,
                "marker": marker_hit(reply["text"], markers),
                "style": style,
                "prompt_tokens": reply["prompt_tokens"],
                "completion_tokens": reply["completion_tokens"],
                "latency_s": reply["latency_s"],
                "s_per_token": reply.get("s_per_token"),
            }
        )
    multi = [
        {"prompt_id": r["prompt_id"], "turn": r["turn"], "marker": marker_hit(r["text"], markers), "style": s}
        for r, s in zip(replies["multi"], multi_style, strict=True)
    ]
    long = []
    for i, (prompt, reply, style) in enumerate(zip(longs, replies["long"], long_style, strict=True)):
        first, last = thirds[i]
        long.append(
            {
                "prompt_id": prompt.id,
                "marker": marker_hit(reply["text"], markers),
                "style": style,
                "first_style": third_style[2 * i],
                "last_style": third_style[2 * i + 1],
                "first_marker": marker_hit(first, markers),
                "last_marker": marker_hit(last, markers),
            }
        )
    return {"single": single, "multi": multi, "long": long}


def _reference_reply(prompt: Any) -> str | None:
    """The held-out reference's reply to a single prompt: the first assistant turn after its messages."""
    ref = prompt.reference or []
    later = [m for m in ref[len(prompt.messages) :] if m["role"] == "assistant"]
    return later[0]["content"] if later else None


def _add_quality(
    scores: dict[str, Any],
    replies: dict[str, list[dict[str, Any]]],
    base: dict[str, list[dict[str, Any]]] | None,
    singles: list,
    markers: list,
    embed: Callable[[list[str]], Any],
    settings: GenSettings,
) -> None:
    """Add the voice-independent quality scores (finetune/compare/quality.py) to each scored row, in place.

    Content kept is the embedding similarity to the held-out reference (single prompts) and to the base
    arm's reply to the same prompt and turn, persona markers removed from both (None for the base arm).
    """
    limits = {"single": settings.max_new_tokens, "multi": settings.max_new_tokens, "long": settings.long_max_new_tokens}
    for kind, limit in limits.items():
        texts = [r["text"] for r in replies[kind]]
        for row, reply in zip(scores[kind], replies[kind], strict=True):
            row.update(quality.reply_quality(reply["text"], reply["completion_tokens"], limit))
        if base is not None:
            if kind == "multi":
                by_key = {(r["prompt_id"], r["turn"]): r["text"] for r in base["multi"]}
                others = [by_key.get((r["prompt_id"], r["turn"])) for r in replies["multi"]]
            else:
                others = [r["text"] for r in base[kind]]
            kept = quality.content_kept(texts, others, markers, embed)
        else:
            kept = [None] * len(texts)
        for row, value in zip(scores[kind], kept, strict=True):
            row["content_base"] = value
    references = [_reference_reply(p) for p in singles]
    kept = quality.content_kept([r["text"] for r in replies["single"]], references, markers, embed)
    for row, reply, ref, value in zip(scores["single"], replies["single"], references, kept, strict=True):
        row["content_ref"] = value
        row["length_ratio"] = quality.length_ratio(reply["text"], ref) if ref else None


def _round(value: float | None, digits: int = 4) -> float | None:
    """Rounded for samples.jsonl (None stays None)."""
    return None if value is None else round(value, digits)


def _quality_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The quality scores a samples.jsonl line carries: loop, ended, content kept (rounded)."""
    fields = {"loop": row.get("loop"), "ended": row.get("ended"), "content_base": _round(row.get("content_base"))}
    if "content_ref" in row:
        fields["content_ref"] = _round(row["content_ref"])
    return fields


def _samples(
    run: str,
    arm: Arm,
    replies: dict[str, list[dict[str, Any]]],
    singles: list,
    longs: list,
    scores: dict[str, Any],
) -> list[dict[str, Any]]:
    """samples.jsonl lines of one arm (the arena's contract): every reply with what the arm saw."""
    lines = []

    def line(
        prompt_id: str, kind: str, turn: int, conversation: list, reply: dict, extra: dict
    ) -> dict[str, Any]:
        return {
            "run": run,
            "arm": arm.name,
            "prompt_id": prompt_id,
            "kind": kind,
            "turn": turn,
            "conversation": [m for m in conversation if m["role"] != "system"],
            "text": reply["text"],
            "prompt_tokens": reply["prompt_tokens"],
            "completion_tokens": reply["completion_tokens"],
            "latency_s": round(reply["latency_s"], 3),
            "scores": extra,
        }

    for prompt, reply, s in zip(singles, replies["single"], scores["single"], strict=True):
        turn = sum(1 for m in prompt.messages if m["role"] == "user") - 1
        lines.append(
            line(
                prompt.id,
                "single",
                turn,
                prompt.messages,
                reply,
                {"marker": s["marker"], "style": _round(s["style"]), **_quality_fields(s)},
            )
        )
    for reply, s in zip(replies["multi"], scores["multi"], strict=True):
        lines.append(
            line(
                reply["prompt_id"],
                "multi",
                reply["turn"],
                reply["conversation"],
                reply,
                {"marker": s["marker"], "style": _round(s["style"]), **_quality_fields(s)},
            )
        )
    for prompt, reply, s in zip(longs, replies["long"], scores["long"], strict=True):
        lines.append(
            line(
                prompt.id,
                "long",
                0,
                [{"role": "user", "content": prompt.prompt}],
                reply,
                {
                    "marker": s["marker"],
                    "style": _round(s["style"]),
                    "style_first_third": _round(s["first_style"]),
                    "style_last_third": _round(s["last_style"]),
                    **_quality_fields(s),
                },
            )
        )
    return lines


def _system_prompt_tokens(tokenizer: Any, singles: list, system_prompt: str | None) -> float | None:
    """Mean extra input tokens per request that the persona system prompt adds (it replaces any default)."""
    if not system_prompt or not singles:
        return None
    system = [{"role": "system", "content": system_prompt}]
    extra = [budget.prompt_tokens(tokenizer, system + p.messages) - budget.prompt_tokens(tokenizer, p.messages)
             for p in singles]
    return sum(extra) / len(extra)


def _merged_sources_cost(folder: Path) -> FinetuneCost | None:
    """A merge-adapters output's cost: what training its sources cost together (merge.json), where known."""
    from finetune.runs import MERGE_FILE

    try:
        merge = json.loads((folder / MERGE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cost = merge.get("sources_cost") if isinstance(merge, dict) else None
    if not isinstance(cost, dict) or not isinstance(cost.get("amount"), (int, float)) or not cost.get("currency"):
        return None
    return FinetuneCost(amount=float(cost["amount"]), currency=str(cost["currency"]), source="merged-sources",
                        note=f"{folder.name} is a merge: its sources' training costs together ({MERGE_FILE})")


def _finetune_cost(adapter: Adapter) -> FinetuneCost:
    """The fine-tune's cost from summary.json, else an electricity estimate from the stated local figures."""
    from finetune.compare.prices import PRICES_FILE, local_figures

    summary = adapter.summary or {}
    cost = summary.get("cost") or {}
    if cost.get("amount") is not None:
        return FinetuneCost(amount=float(cost["amount"]), currency=cost["currency"], source="summary", note=None)
    merged = _merged_sources_cost(adapter.run_dir) if not summary else None
    if merged is not None:
        return merged
    wall = summary.get("wall_time_s")
    if wall is None:
        note = f"{adapter.run_dir}/summary.json has no cost and no wall time: break-even skipped"
        return FinetuneCost(amount=None, currency=None, source="none", note=note)
    local = local_figures()
    amount = breakeven.local_energy_cost(wall, local["power_w"], local["price_per_kwh"])
    note = (
        f"summary.json has no cost (the recipe has no cost section); estimated as wall time {wall:.0f} s x "
        f"{local['power_w']} W x {local['price_per_kwh']} {local['currency']}/kWh "
        f"(local entry of {PRICES_FILE.name})"
    )
    return FinetuneCost(amount=amount, currency=local["currency"], source="estimated-local", note=note)


def _money(amount: float, currency: str) -> str:
    """An amount for a verdict: the catalogue's format, or two significant digits when it would show '<'."""
    from finetune.cost import format_money

    text = format_money(amount, currency)
    return f"{amount:.2g} {currency}" if text.startswith("<") else text


def _cost_section(
    price: Price,
    arms: list[Arm],
    adapters: list[Adapter],
    singles: list,
    tokenizer: Any,
    system_prompt: str | None,
    warnings: list[str],
) -> tuple[Cost, list[str]]:
    """Price, the system prompt's extra tokens, and the break-even point of each adapter arm."""
    from finetune.cost import convert, format_money

    extra = _system_prompt_tokens(tokenizer, singles, system_prompt)
    section = Cost(price=price, system_prompt_tokens=extra, adapters={})
    lines = []
    price_text = f"{format_money(price.per_mtok, price.currency)} per million input tokens"
    by_label = {a.label: a for a in adapters}
    for arm in arms:
        if arm.adapter is None or arm.prompt:
            continue  # break-even is about replacing the prompt by the adapter
        adapter = by_label[arm.adapter]
        spent = _finetune_cost(adapter)
        result, text = None, spent.note or ""
        if spent.amount is not None and extra is not None:
            try:
                amount = convert(spent.amount, spent.currency, price.currency)
            except Exception as exc:  # an unknown currency loses the break-even line, not the report
                warnings.append(f"{arm.name}: break-even skipped: {exc}")
                amount = None
            if amount is not None:
                result = BreakEven(**breakeven.break_even(amount, extra, price.per_mtok), currency=price.currency)
                cost_text = _money(spent.amount, spent.currency)
                if spent.currency != price.currency:
                    cost_text += f" = {_money(amount, price.currency)}"
                if spent.source == "estimated-local":
                    cost_text += " estimated from wall time"
                text = breakeven.describe(result.model_dump(), arm.name, cost_text, price_text, extra)
                lines.append(text)
        elif extra is None:
            text = "no system prompt to compare against: break-even not computed"
        if spent.note:
            warnings.append(f"{arm.name}: {spent.note}")
        section.adapters[arm.name] = AdapterCost(run=adapter.label, finetune_cost=spent, break_even=result, text=text)
    return section, lines
