"""A time budget for compare (`--max-time`): time the loaded model briefly, predict each part, shrink the sets.

Training fits its schedule into `max_time` from its first steps' speed; compare does the same from a probe of
a few seconds on the loaded model (`measure`): decoding steps at one row and at a full batch, with the adapter
switched on and in PEFT's mixed-adapter batch, a forward pass over a few real prompts, a few rows of
perplexity scoring, and a few replies through the sentence embedder. The prediction (`predict`) then walks the
work compare is about to do, batch by batch: each generation batch costs its prompt tokens at the measured
prompt rate plus `max_new_tokens` decoding steps (a step costs a + b x rows, times the adapter's or the mixed
batch's measured factor); scoring costs the positions it computes (padding included) at the measured scoring
rate; embedding costs its texts at the measured rate per text. Replies are taken at full length, which errs
high; the longer context of late conversation turns is not modelled, which errs low. So every compare with a
budget stores what each part took against what was
predicted (`remember`, per machine, model and dtype, in $FINETUNE_HOME/compare_calibration.json), and the next
one here scales each part by the median of the last few ratios (`learned`): the training estimate's way of
learning from every run, applied to compare.

When the whole plan does not fit, every prompt set shrinks by one shared factor (first N items: the sets
are prefixes, so a smaller run is a subset of the full one) down to floors below which a verdict means
little; what is cut is said on the console and recorded in report.json. Where even the floors do not fit
(a slow CPU: every decoding step of a conversation or a long answer waits for the one before), the long answers
and then the conversations are left out whole: at their floor of one they give a drift figure, never a verdict.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from finetune.compare.arms import Arm
from finetune.compare.prompts import LongPrompt, MCQuestion, Messages, MultiTurn, SinglePrompt, TrainPair

PROBE_STEPS = 10  # decoding steps timed per probe (after the one that comes with the prompt's forward pass)
PROBE_PROMPTS = 4  # real prompts whose forward pass gives the prompt-token rate
PROBE_REFERENCES = 2  # perplexity rows timed (scoring costs per token, so a few rows give its rate)
# Below these a set stops shrinking (or keeps what was asked, when that is less). Under 12 single prompts the
# verdicts stand on little more than the paired tests' minimum of 5 items; conversations and long answers
# under 5 items give drift figures without intervals at any size, so one of each still shows the drift.
FLOORS = {"singles": 12, "conversations": 1, "long": 1, "mc": 20, "classifier": 24}
# When even the floors do not fit: the sets left out, long answers first (192 decoding steps each, one after the
# other), then conversations (the drift figure users come for, kept longest). One of each gives a drift figure
# but never a verdict, so leaving them out changes no verdict; it is said on the console and in the report.
LEAVE_OUT = ("long", "conversations")
PARTS = ("single", "shared", "classifier", "score", "embed")
PROBE_TEXTS = 8  # reference replies embedded by the probe: two to load the embedding model, the rest timed
LEARN_FILE = "compare_calibration.json"
LEARN_FROM = 3  # the latest compares of the same kind a part's factor is the median of
LEARN_KEEP = 50  # records kept in the file (the oldest go)
LEARN_MIN_S = 2.0  # a part predicted shorter than this teaches nothing: its ratio is mostly noise
FACTOR_RANGE = (0.5, 3.0)  # a ratio outside this says something changed (another load, a cache), not the machine


@dataclass(frozen=True)
class Sizes:
    """How many items of each prompt set compare uses (`mc` is per multiple-choice file)."""

    singles: int
    conversations: int
    long: int
    mc: int
    classifier: int

    def scaled(self, factor: float, floors: Sizes) -> Sizes:
        """Every set at `factor` of its size, never below its floor nor above its size."""
        return Sizes(**{
            name: min(full, max(getattr(floors, name), math.ceil(factor * full)))
            for name, full in asdict(self).items()
        })


@dataclass(frozen=True)
class Rates:
    """What the probe measured on the loaded model, in the inference dtype."""

    prefill_tokens_s: float  # prompt tokens per second of a generation batch's first forward pass
    score_tokens_s: float  # tokens per second of teacher-forced scoring (perplexity, multiple choice)
    step_s: float  # a: seconds of one decoding step, apart from its rows
    step_per_row_s: float  # b: seconds each row adds to a decoding step
    adapter_factor: float = 1.0  # a step with an adapter switched on, over the base model's
    mixed_factor: float = 1.0  # a step of PEFT's mixed-adapter batch, over one adapter's
    embed_text_s: float = 0.0  # seconds the sentence-embedding model takes per reply-length text

    def step(self, rows: int, kind: str) -> float:
        """Seconds of one decoding step of `rows` rows: kind base, adapter or mixed."""
        factor = {"base": 1.0, "adapter": self.adapter_factor,
                  "mixed": self.adapter_factor * self.mixed_factor}[kind]
        return (self.step_s + self.step_per_row_s * rows) * factor


@dataclass
class Work:
    """The prompt sets compare is about to run, as token counts (every list in the sets' own order).

    Generation rows are prompt token counts with and without the persona system prompt; conversations give,
    per conversation, the prompt tokens of each turn (earlier replies counted at full length).
    """

    arms: list[Arm]
    batch_size: int
    max_new_tokens: int
    long_max_new_tokens: int
    singles: dict[bool, list[int]]  # with system prompt (True) or without
    conversations: dict[bool, list[list[int]]]
    long: dict[bool, list[int]]
    classifier: list[int]
    references: dict[bool, list[int]]  # perplexity rows, aligned with singles (0: no reference)
    # Multiple choice, per file: the prompt head every question shares (scored once), then per question its
    # prompt tokens after that head and each option's tokens (likelihood.mc_results' own split).
    mc: dict[bool, list[list[tuple[int, list[int]]]]]
    mc_head: dict[bool, list[int]]
    cached: Callable[[str, Arm, int], bool] = lambda what, arm, n: False  # noqa: E731 (a default)


def prompt_tokens(tokenizer: Any, messages: Messages) -> int:
    """Tokens of a prompt as generation sends it (chat template with the generation prompt)."""
    from finetune.data import render_chat

    text = render_chat(tokenizer, messages, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def plan(
    tokenizer: Any,
    arms: list[Arm],
    system_prompt: str | None,
    settings: Any,
    max_length: int,
    singles: list[SinglePrompt],
    multi: list[MultiTurn],
    longs: list[LongPrompt],
    pairs: list[TrainPair],
    mc_sets: list[list[MCQuestion]],
    cached: Callable[[str, Arm, int], bool],
) -> Work:
    """The prompt sets as token counts, with and without the system prompt (`mc_sets`: questions per file).

    `cached(what, arm, n)`: whether the cache holds that arm's work on the first n items of a set: `single`
    replies, the base model's `classifier-base` replies, `perplexity` of the single prompts' references, or
    `mc-<i>` scores of the i-th multiple-choice file.
    """
    from finetune.compare.likelihood import mc_fallback_rows, mc_prompts
    from finetune.data import end_of_turn_token, tokenize_conversation

    terminator = end_of_turn_token(tokenizer)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    # An earlier reply in a conversation, counted at full length (an upper bound, as the prediction is).
    reply = {"role": "assistant", "content": " ".join(["a"] * settings.max_new_tokens)}

    def tokens(messages: list[dict[str, str]], with_system: bool) -> int:
        return prompt_tokens(tokenizer, (system if with_system else []) + messages)

    def turns(conversation: MultiTurn, with_system: bool) -> list[int]:
        out, history = [], []
        for turn in conversation.turns:
            history.append({"role": "user", "content": turn})
            out.append(tokens(history, with_system))
            history.append(reply)
        return out

    def reference(p: SinglePrompt, with_system: bool) -> int:
        if not p.reference:
            return 0
        rows = (system if with_system else []) + p.reference
        return len(tokenize_conversation(tokenizer, rows, max_length, terminator)["input_ids"])

    def mc(questions: list[MCQuestion], with_system: bool) -> tuple[int, list[tuple[int, list[int]]]]:
        messages, split, head = mc_prompts(tokenizer, questions, system_prompt if with_system else None)
        out = []
        for sent, q, parts in zip(messages, questions, split, strict=True):
            if parts is None:  # scored as whole sequences, one row per option (mc_results' fallback)
                out.append((0, [len(row["input_ids"]) for row in mc_fallback_rows(tokenizer, sent, q)]))
            else:
                out.append((len(parts[0]) - head, [len(o) for o in parts[1]]))
        return head, out

    def with_or_not(count: Callable[[bool], Any]) -> dict[bool, Any]:
        return {with_system: count(with_system) for with_system in (False, True)}

    mc_files = with_or_not(lambda s: [mc(qs, s) for qs in mc_sets])
    return Work(
        arms=arms,
        batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens,
        long_max_new_tokens=settings.long_max_new_tokens,
        singles=with_or_not(lambda s: [tokens(p.messages, s) for p in singles]),
        conversations=with_or_not(lambda s: [turns(c, s) for c in multi]),
        long=with_or_not(lambda s: [tokens([{"role": "user", "content": p.prompt}], s) for p in longs]),
        classifier=[tokens(p.messages, False) for p in pairs],
        references=with_or_not(lambda s: [reference(p, s) for p in singles]),
        mc={s: [questions for _, questions in files] for s, files in mc_files.items()},
        mc_head={s: [head for head, _ in files] for s, files in mc_files.items()},
        cached=cached,
    )


def _kind(arms: list[Arm]) -> str:
    """How a batch of these arms' rows runs (generation.ArmModels.use_rows): base, adapter or mixed."""
    adapters = {arm.adapter for arm in arms}
    if len(adapters) > 1:
        return "mixed"
    return "base" if adapters == {None} else "adapter"


def generation_s(rates: Rates, lengths: list[int], new_tokens: int, batch_size: int, kind: str) -> float:
    """Predicted seconds to answer prompts of these token counts, batched by length as generation does."""
    total = 0.0
    ordered = sorted(lengths)
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        total += len(chunk) * max(chunk) / rates.prefill_tokens_s + new_tokens * rates.step(len(chunk), kind)
    return total


def scoring_tokens(lengths: list[int], batch_size: int) -> int:
    """Positions a teacher-forced pass computes over rows of these lengths: sorted by length and each batch
    padded to its longest row, as likelihood.sequence_logprobs batches them (padding is computed too)."""
    ordered = sorted(lengths)
    return sum(len(chunk) * max(chunk) for chunk in _chunks(ordered, batch_size))


def mc_tokens(head: int, questions: list[tuple[int, list[int]]], batch_size: int) -> int:
    """Positions likelihood.mc_results computes for these questions: the shared head once, then per batch of
    questions (in order) their prompts padded to the longest and every option padded to the longest."""
    total = head if questions else 0
    for chunk in _chunks(questions, batch_size):
        options = [n for _, per_option in chunk for n in per_option]
        total += len(chunk) * max(prompt for prompt, _ in chunk) + len(options) * max(options, default=0)
    return total


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def predict(
    rates: Rates, work: Work, sizes: Sizes, factors: dict[str, float] | None = None
) -> dict[str, float]:
    """Predicted seconds of each part of compare (generation, classifier, scoring, embedding) at these sizes.

    `factors`: what earlier compares here measured against their prediction, per part (`learned`).
    """
    b, arms = work.batch_size, work.arms
    single_s = sum(
        generation_s(rates, work.singles[arm.prompt][: sizes.singles], work.max_new_tokens, b, _kind([arm]))
        for arm in arms
        if not work.cached("single", arm, sizes.singles)
    )
    shared_s = 0.0
    conversations = {p: rows[: sizes.conversations] for p, rows in work.conversations.items()}
    for turn in range(max((len(c) for c in conversations[False]), default=0)):
        rows = [(arm, c[turn]) for arm in arms for c in conversations[arm.prompt] if turn < len(c)]
        if rows:
            lengths = [n for _, n in rows]
            shared_s += generation_s(rates, lengths, work.max_new_tokens, b, _kind([a for a, _ in rows]))
    longs = [work.long[arm.prompt][i] for arm in arms for i in range(min(sizes.long, len(work.long[False])))]
    if longs:
        shared_s += generation_s(rates, longs, work.long_max_new_tokens, b, _kind(arms))
    base = Arm("base", None, False)
    classifier_s = 0.0
    if not work.cached("classifier-base", base, sizes.classifier):
        classifier_s = generation_s(rates, work.classifier[: sizes.classifier], work.max_new_tokens, b, "base")
    scored = 0
    for arm in arms:
        if not work.cached("perplexity", arm, sizes.singles):
            scored += scoring_tokens([n for n in work.references[arm.prompt][: sizes.singles] if n], b)
        for index, per_file in enumerate(work.mc[arm.prompt]):
            if not work.cached(f"mc-{index}", arm, sizes.mc):
                scored += mc_tokens(work.mc_head[arm.prompt][index], per_file[: sizes.mc], b)
    parts = {
        "single": single_s,
        "shared": shared_s,
        "classifier": classifier_s,
        "score": scored / rates.score_tokens_s,
        "embed": embedded_texts(work, sizes) * rates.embed_text_s,
    }
    return {part: seconds * (factors or {}).get(part, 1.0) for part, seconds in parts.items()}


def embedded_texts(work: Work, sizes: Sizes) -> int:
    """Reply-length texts the embedding model encodes at these sizes (an upper bound; a cache keeps repeats).

    The classifier's training replies (persona and base); per arm, each single reply for its style and again
    with the persona's markers removed for the content scores, each conversation turn likewise, each long answer
    (three replies long) with its first and last thirds and its unmarked copy; the references once.
    Unlike generation and scoring, none of it is cached across compares: a second compare pays it again.
    """
    singles = min(sizes.singles, len(work.singles[False]))
    turns = sum(len(turns) for turns in work.conversations[False][: sizes.conversations])
    longs = min(sizes.long, len(work.long[False]))
    per_arm = 2 * singles + 2 * turns + (3 + 2 + 3) * longs
    return 2 * min(sizes.classifier, len(work.classifier)) + len(work.arms) * per_arm + singles


def fit(
    rates: Rates, work: Work, requested: Sizes, seconds: float, factors: dict[str, float] | None = None
) -> tuple[Sizes, dict[str, float]]:
    """The largest sizes, one shared fraction of each requested set, predicted to finish in `seconds`.

    Returns the sizes and their predicted parts (scaled by `factors`, see `predict`); at the floors the
    prediction may still exceed `seconds` (the caller says so). Where the floors do not fit, the sets in
    LEAVE_OUT go (see `left_out`) before anything goes below its floor.
    """
    sizes, parts = _shrink(rates, work, requested, seconds, factors)
    # Over even at the floors: leave out, one after the other, the sets whose floor gives a figure but no
    # verdict (a drift interval needs MIN_SIGNIFICANT_N items; their floor is one), and fit the rest again.
    # Every verdict compare can still reach stays; a slow CPU then spends its minutes where they tell.
    for count in range(1, len(LEAVE_OUT) + 1):
        if sum(parts.values()) <= seconds:
            break
        asked = replace(requested, **{name: 0 for name in LEAVE_OUT[:count]})
        if asked != requested:
            sizes, parts = _shrink(rates, work, asked, seconds, factors)
    return sizes, parts


def left_out(requested: Sizes, sizes: Sizes) -> list[str]:
    """The sets `fit` left out whole (asked for, none kept), in LEAVE_OUT's order."""
    return [name for name in LEAVE_OUT if getattr(requested, name) and not getattr(sizes, name)]


def _shrink(
    rates: Rates, work: Work, requested: Sizes, seconds: float, factors: dict[str, float] | None
) -> tuple[Sizes, dict[str, float]]:
    """The largest shared fraction of every set (down to the floors) predicted to finish in `seconds`."""
    floors = Sizes(**FLOORS)
    whole = predict(rates, work, requested, factors)
    if sum(whole.values()) <= seconds:
        return requested, whole
    low, high = 0.0, 1.0
    for _ in range(20):  # bisection on the shared fraction; sizes are whole items, so 20 halvings suffice
        middle = (low + high) / 2
        if sum(predict(rates, work, requested.scaled(middle, floors), factors).values()) <= seconds:
            low = middle
        else:
            high = middle
    sizes = requested.scaled(low, floors)
    return sizes, predict(rates, work, sizes, factors)


# --- learning from earlier compares on this machine -----------------------------------------------------------


def learning_key(model: str, dtype: str) -> dict[str, str]:
    """What a learned factor holds for: this machine (device, torch, usable kernels), the base model, the dtype."""
    from finetune.hardware import machine_key

    return {"machine": machine_key(), "model": model, "dtype": dtype}


def _learn_path() -> Any:
    from finetune.paths import finetune_home

    return finetune_home() / LEARN_FILE


def _records() -> list[dict[str, Any]]:
    """The stored compare records (none when the file is missing or unreadable: learning is a bonus)."""
    try:
        records = json.loads(_learn_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def learned(key: dict[str, str]) -> tuple[dict[str, float], int]:
    """Per part, the median of measured/predicted over the latest compares of this kind; and how many were read.

    A part no earlier compare predicted at LEARN_MIN_S or more keeps factor 1.
    """
    same = [r for r in _records() if r.get("key") == key][-LEARN_FROM:]
    factors: dict[str, float] = {}
    for part in PARTS:
        ratios = []
        for record in same:
            predicted = record.get("predicted_s", {}).get(part)
            measured = record.get("measured_s", {}).get(part)
            if isinstance(predicted, (int, float)) and isinstance(measured, (int, float)) \
                    and predicted >= LEARN_MIN_S and measured > 0:
                ratios.append(measured / predicted)
        low, high = FACTOR_RANGE
        factors[part] = min(high, max(low, statistics.median(ratios))) if ratios else 1.0
    return factors, len(same)


def remember(key: dict[str, str], predicted: dict[str, float], measured: dict[str, float], where: str) -> None:
    """Store one compare's unscaled prediction and measured seconds per part for the next compare here."""
    from datetime import datetime

    from finetune import atomic

    record = {"key": key, "predicted_s": {k: round(v, 3) for k, v in predicted.items()},
              "measured_s": {k: round(v, 3) for k, v in measured.items()}, "report": where,
              "measured_at": datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        atomic.write_json(_learn_path(), [*_records(), record][-LEARN_KEEP:])
    except OSError:
        pass  # a read-only cache costs the next compare its correction, not this one its report


class _StepClock:
    """A transformers streamer that notes when each decoding step hands over its tokens."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def measure(
    models: Any,
    arms: list[Arm],
    sample: list[Messages],
    references: list[Messages],
    max_length: int,
    settings: Any,
    embed: Callable[[list[str]], Any] | None = None,
) -> Rates:
    """Time generation and scoring on the loaded model: a few seconds of the batches compare will run.

    `sample`: single prompts (the first few are timed); `references`: perplexity rows (likewise), whose replies
    also time `embed` (the style classifier's sentence embedder: the first two load it, the rest are timed).
    One generation per kind of batch, its steps timed as they stream: the first interval is the prompt's
    forward pass, the median of the rest is a decoding step (a median, so one step a neighbour slowed
    does not become the rate).
    """
    from finetune.compare.generation import generate_rows
    from finetune.compare.likelihood import reference_log_perplexities

    width = settings.batch_size
    base = Arm("base", None, False)
    adapter = next((arm for arm in arms if arm.adapter), None)
    # Decoding steps are timed on a two-word prompt (a step's cost hardly depends on a short context, and a
    # long prompt's forward pass would cost the probe more than its steps); the prompt rate on real prompts.
    short: Messages = [{"role": "system", "content": "Hi."}, {"role": "user", "content": "Hi."}]
    real = [sample[i % len(sample)] for i in range(min(width, PROBE_PROMPTS))]

    def timed(batch: list[tuple[Arm, Messages]], steps: int = 1 + PROBE_STEPS) -> tuple[float, float]:
        """(seconds of the prompt's forward pass, seconds of one decoding step) of one generation."""
        clock = _StepClock()
        generate_rows(models, batch, None, replace(settings, batch_size=len(batch)), steps,
                      min_new_tokens=steps, streamer=clock)
        gaps = [later - earlier for earlier, later in zip(clock.times, clock.times[1:])]
        return gaps[0], max(1e-6, statistics.median(gaps[1:]))

    timed([(base, short)], 2)  # a first call pays one-time set-up
    _, one = timed([(base, short)])
    _, full = timed([(base, short)] * width)
    prefill, _ = timed([(base, r) for r in real], 2)
    per_row = max(0.0, (full - one) / max(1, width - 1))
    adapter_factor = mixed_factor = 1.0
    if adapter is not None:
        _, with_adapter = timed([(adapter, short)] * width)
        adapter_factor = with_adapter / full
        if any(arm.adapter != adapter.adapter for arm in arms):
            _, mixed = timed([(adapter if i % 2 else base, short) for i in range(width)])
            mixed_factor = mixed / with_adapter
    prompt_total = sum(prompt_tokens(models.tokenizer, r) for r in real)
    prefill_rate = prompt_total / max(1e-6, prefill)
    # Scoring: a few perplexity rows as compare scores them (every position's log-probabilities).
    score_rate = prefill_rate
    refs = references[:PROBE_REFERENCES]
    if refs:
        from finetune.data import end_of_turn_token, tokenize_conversation

        terminator = end_of_turn_token(models.tokenizer)
        tokens = sum(len(tokenize_conversation(models.tokenizer, r, max_length, terminator)["input_ids"])
                     for r in refs)
        with models.use(adapter or base) as model:
            began = time.perf_counter()
            reference_log_perplexities(model, models.tokenizer, refs, max_length, len(refs))
            score_rate = tokens / max(1e-6, time.perf_counter() - began)
    per_text = 0.0
    replies = list(dict.fromkeys(m["content"] for r in references for m in r if m["role"] == "assistant"))
    if embed is not None and len(replies) > 2:
        embed(replies[:2])
        began = time.perf_counter()
        embed(replies[2:PROBE_TEXTS])
        per_text = (time.perf_counter() - began) / len(replies[2:PROBE_TEXTS])
    return Rates(
        prefill_tokens_s=prefill_rate,
        score_tokens_s=score_rate,
        step_s=max(0.0, one - per_row),
        step_per_row_s=per_row,
        adapter_factor=adapter_factor,
        mixed_factor=mixed_factor,
        embed_text_s=per_text,
    )
