"""The estimator's assumptions: every figure not read from the model, recipe or GPU catalogue, typed.

They live in catalog/estimate_assumptions.yaml (with where each figure comes from); this module validates
that file like a recipe (unknown keys and wrong types fail with the file, line and key) into a frozen
`Assumptions` that the pure functions of the estimate package take explicitly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finetune.catalog import CATALOG_DIR, CatalogError
from finetune.recipe import _key_lines, _location, explain_error

ASSUMPTIONS_FILE = CATALOG_DIR / "estimate_assumptions.yaml"

Fraction = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


class _Frozen(BaseModel):
    """A section of the assumptions file: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Coefficients(_Frozen):
    """Bytes saved per token per layer, per unit of hidden size, query width and intermediate size."""

    c_h: NonNegative
    c_q: NonNegative
    c_i: NonNegative


class ActivationCoefficients(_Frozen):
    """One row of coefficients per precision mode (`_dropout` rows apply when lora.dropout > 0)."""

    fp32: Coefficients
    fp32_dropout: Coefficients
    autocast: Coefficients
    autocast_dropout: Coefficients
    kbit: Coefficients
    kbit_dropout: Coefficients
    cpu_bf16: Coefficients
    cpu_bf16_dropout: Coefficients
    pure16: Coefficients
    pure16_dropout: Coefficients

    def row(self, mode: str) -> Coefficients:
        """The coefficients of one mode (a field name above)."""
        return getattr(self, mode)


class ScalingEfficiency(_Frozen):
    """Multi-GPU efficiency per strategy: time = single-GPU time / (N x efficiency)."""

    ddp: Fraction
    zero2: Fraction
    fsdp: Fraction
    zero3: Fraction

    def of(self, strategy: str) -> float:
        """The efficiency of a strategy (1.0 for one not listed)."""
        return float(getattr(self, strategy, 1.0))


class Assumptions(_Frozen):
    """Everything catalog/estimate_assumptions.yaml states (see its comments for the sources)."""

    # time
    utilisation: Fraction
    cpu_utilisation: Fraction
    cpu_min_gflops_per_core: NonNegative
    quantised_slowdown: dict[Literal[4, 8], float]
    cpu_quantised_slowdown: dict[Literal[4, 8], float]
    step_overhead_s_per_layer: NonNegative
    cpu_step_overhead_gflop_per_layer: NonNegative
    cpu_dropout_ns_per_element: NonNegative
    scaling_efficiency: ScalingEfficiency
    # energy
    power_fraction: Fraction
    cpu_power_w: Positive
    # tokens
    large_dataset_mb: Positive
    chars_per_token_ascii: Positive
    chars_per_token_other: Positive
    template_tokens_per_message: NonNegative
    # memory
    nf4_block_size: Annotated[int, Field(gt=0)]
    double_quant_block_size: Annotated[int, Field(gt=0)]
    kbit_unquantized_bytes: Literal[2, 4]
    lora_param_bytes: Literal[2, 4]
    adam_state_bytes: Annotated[int, Field(ge=0)]
    cuda_context_gb: NonNegative
    cuda_checkpointing_off_share: Fraction
    allocator_margin: NonNegative
    cpu_allocator_margin: NonNegative
    cpu_run_climb: NonNegative
    usable_memory_fraction: Fraction
    cpu_process_baseline_gb: NonNegative
    cpu_usable_memory_fraction: Fraction
    loss_chunk_mb: NonNegative
    activation_coefficients: ActivationCoefficients
    autocast_16bit: bool = True

    def with_changes(self, **changes: Any) -> Assumptions:
        """A validated copy with some figures changed (what-if calculations, papers' settings in tests)."""
        return Assumptions.model_validate({**self.model_dump(), **changes})


def load_assumptions(path: str | Path = ASSUMPTIONS_FILE) -> Assumptions:
    """Read and validate an assumptions file; CatalogError names its file, line and key on a problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise CatalogError(f"{path}{f': line {mark.line + 1}' if mark else ''}: invalid YAML") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a mapping of assumption names to values")
    try:
        return Assumptions.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt key is also a missing one: name the misspelling, whose did-you-mean says it all.
        first = dict(next((e for e in errors if e["type"] == "extra_forbidden"), errors[0]))
        where = _location(path, _key_lines(text, str(path)), tuple(first["loc"]))
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise CatalogError(f"{where}: {explain_error(first, Assumptions)}{more}") from None


@lru_cache(maxsize=1)
def assumptions() -> Assumptions:
    """The shipped assumptions, read and validated once per process (frozen, so shared safely)."""
    return load_assumptions()
