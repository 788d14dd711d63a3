"""The fixed report.json schema as pydantic models (docs/compare.md documents every field)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from finetune.errors import DataError

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    """Unknown keys are schema errors: a reader can trust that every field is documented."""

    model_config = ConfigDict(extra="forbid")


class Estimate(_Strict):
    """A mean with its bootstrap 95% confidence interval over n items."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


class ArmMetrics(_Strict):
    """Every per-arm metric (null where the arm has no such items, e.g. no long prompts were given).

    In the order of analysis.METRICS, which is the order report.json writes them in.
    """

    style: Estimate | None
    marker_rate: Estimate | None
    style_multi: Estimate | None
    marker_rate_multi: Estimate | None
    style_long: Estimate | None
    marker_rate_long: Estimate | None
    perplexity: Estimate | None
    # Answer quality (docs/compare.md "Answer quality"); absent in reports written before it existed.
    loop_share: Estimate | None = None
    loop_share_multi: Estimate | None = None
    loop_share_long: Estimate | None = None
    distinct_2: Estimate | None = None
    distinct_2_multi: Estimate | None = None
    distinct_2_long: Estimate | None = None
    ended_share: Estimate | None = None
    ended_share_multi: Estimate | None = None
    ended_share_long: Estimate | None = None
    content_ref: Estimate | None = None
    content_base: Estimate | None = None
    content_base_multi: Estimate | None = None
    content_base_long: Estimate | None = None
    length_ratio: Estimate | None = None
    prompt_tokens: Estimate | None
    completion_tokens: Estimate | None
    latency_s: Estimate | None
    s_per_token: Estimate | None


class PairedEstimate(Estimate):
    """A paired estimate with its test: p-value, Holm-adjusted p-value (verdicts only), minimum detectable effect."""

    p_value: float | None = None
    test: str | None = None  # paired-t | sign | mcnemar-exact | too-few-items
    mde: float | None = None
    p_holm: float | None = None  # set by analysis.apply_holm on the verdicts' and the decision's tests only


class Difference(PairedEstimate):
    """A paired comparison of arm a with arm b on one metric (a - b, or a / b when scale is ratio)."""

    metric: str
    label: str
    a: str
    b: str
    scale: Literal["difference", "ratio"]
    significant: bool
    better: str | None
    higher_is_better: bool | None


class TurnDrift(_Strict):
    """Style at one user turn (0-based) over the conversations that reached it."""

    turn: int
    style: Estimate
    marker_rate: Estimate


class MultiDrift(_Strict):
    """Style by turn, and the paired change from the first to each conversation's last turn."""

    by_turn: list[TurnDrift]
    change: PairedEstimate


class ThirdScores(_Strict):
    """Style of one third of long answers."""

    style: Estimate
    marker_rate: Estimate


class LongDrift(_Strict):
    """Style of the first and last third (by sentences) of long answers, and the paired change."""

    first_third: ThirdScores
    last_third: ThirdScores
    change: PairedEstimate


class Drift(_Strict):
    """Drift per arm over conversations (multi) and within long answers (long)."""

    multi: dict[str, MultiDrift]
    long: dict[str, LongDrift]


class MCArm(_Strict):
    """Multiple-choice accuracy of one arm: length-normalised (accuracy) and by summed log-probability."""

    accuracy: Estimate
    accuracy_sum: Estimate


class MCSet(_Strict):
    """One multiple-choice file and every arm's accuracy on it."""

    file: str
    n: int
    scoring: str
    arms: dict[str, MCArm]


class Price(_Strict):
    """The input-token price used for the break-even point."""

    per_mtok: float
    currency: str
    source: str


class FinetuneCost(_Strict):
    """What the fine-tune cost, and where the figure comes from."""

    amount: float | None
    currency: str | None
    source: Literal["summary", "merged-sources", "estimated-local", "none"]
    note: str | None


class BreakEven(_Strict):
    """Requests after which the system prompt has cost more than the fine-tune."""

    status: Literal["breaks_even", "never", "already_cheaper"]
    requests: int | None
    saving_per_request: float
    currency: str


class AdapterCost(_Strict):
    """The cost side of one adapter arm."""

    run: str
    finetune_cost: FinetuneCost
    break_even: BreakEven | None
    text: str


class Cost(_Strict):
    """Prices, the system prompt's extra tokens per request, and break-even per adapter."""

    price: Price | None
    system_prompt_tokens: float | None
    adapters: dict[str, AdapterCost]


class Classifier(_Strict):
    """The style classifier and its own held-out accuracy."""

    available: bool
    reason: str | None
    n_train: int
    n_test: int
    accuracy: float | None
    embedder: str


class PromptSet(_Strict):
    """One prompt set: where it came from, how many items, its content hash."""

    source: str | None
    n: int
    hash: str | None


class Reason(_Strict):
    """One clause of the decision and the evidence behind it."""

    topic: str  # style | quality | drift | ability | arena | latency | cost
    text: str


class Decision(_Strict):
    """"Adapter or prompt?": one recommendation with the evidence behind each clause."""

    recommendation: Literal["adapter", "prompt", "both", "neither", "not enough evidence"]
    arm: str | None  # the adapter arm the decision is about
    headline: str
    reasons: list[Reason]
    more_prompts: int | None  # with "not enough evidence": how many more prompts would settle it


class Settings(_Strict):
    """Everything needed to reproduce the comparison."""

    arms: list[str]
    adapters: dict[str, str]
    model: str
    recipe: str
    system_prompt: str | None
    system_prompt_source: str
    seed: int
    do_sample: bool
    temperature: float | None
    repetition_penalty: float | None = None  # over each reply's own tokens (absent: plain decoding)
    max_new_tokens: int
    long_max_new_tokens: int
    batch_size: int
    turns: int | None
    prompt_sets: dict[str, PromptSet]
    perplexity: str
    bootstrap: dict[str, Any]
    cache: dict[str, Any]
    device: str
    dtype: str
    versions: dict[str, str]
    statistics: dict[str, Any] | None = None  # tests, correction and family size (docs/compare.md)
    budget: dict[str, Any] | None = None  # --max-time: probe rates, requested and fitted sizes, predicted/measured


class Report(_Strict):
    """report.json."""

    schema_version: Literal[1]
    run: str
    created_at: str
    settings: Settings
    arms: dict[str, ArmMetrics]
    differences: list[Difference]
    drift: Drift
    multiple_choice: dict[str, MCSet]
    cost: Cost
    classifier: Classifier
    verdicts: list[str]
    decision: Decision | None = None
    warnings: list[str]
    timings: dict[str, float]
    arena: dict[str, Any] | None = None  # written later by `finetune arena results --update-reports`


def validate_report(data: dict[str, Any]) -> Report:
    """Check a report.json object against the schema (raises pydantic.ValidationError)."""
    return Report.model_validate(data)


def read_report(path: Path) -> Report:
    """A report.json read through the schema; a file that is not one is a one-line DataError naming it."""
    from finetune.recipe import explain_error

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the compare report ({exc.strerror})") from None
    try:
        return Report.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors()
        # An unknown key says most (a renamed key is also reported missing under its old name).
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataError(
            f"{path}: not a compare report of schema_version {SCHEMA_VERSION}: {explain_error(first, Report)}"
            f"{more}; rerun `finetune compare` or move the folder aside"
        ) from None
