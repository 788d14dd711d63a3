"""The data catalogues under finetune/catalog/: GPUs, models, exchange rates, hosted APIs, with overrides."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from finetune.errors import FinetuneError
from finetune.paths import finetune_home

CATALOG_DIR = Path(__file__).parent / "catalog"


class CatalogError(FinetuneError):
    """A catalogue file (shipped or the user's override) is unreadable or has a bad entry."""


class _Entry(BaseModel):
    """A catalogue entry: unknown keys are errors, like in a recipe."""

    model_config = ConfigDict(extra="forbid")


class Rental(_Entry):
    """A typical rental price for one GPU, dated, with where it was read."""

    usd_per_hour: float = Field(ge=0)
    as_of: str
    source: str


class GPU(_Entry):
    """One GPU's memory, speed, power and typical price."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    memory_gb: float = Field(gt=0)
    bf16_tflops: float | None = Field(None, gt=0)
    fp16_tflops: float | None = Field(None, gt=0)
    fp32_tflops: float = Field(gt=0)
    bandwidth_gbs: float | None = Field(None, gt=0)
    power_w: float = Field(gt=0)
    kind: Literal["consumer", "datacenter"] = "consumer"
    rental: Rental | None = None

    @field_validator("aliases", mode="before")
    @classmethod
    def _text_aliases(cls, value: object) -> object:
        """Aliases as text: YAML reads an alias like 4090 as a number."""
        return [str(v) for v in value] if isinstance(value, list) else value

    def tflops(self, precision: str) -> float:
        """Dense peak for a precision; bf16 on a card without it runs at the fp32 rate (emulated)."""
        if precision == "bf16":
            return self.bf16_tflops or self.fp32_tflops
        if precision == "fp16":
            return self.fp16_tflops or self.fp32_tflops
        return self.fp32_tflops

    def best_precision(self) -> str:
        """What `precision: auto` picks on this card: bf16 if it has it, else the faster of fp16/fp32."""
        if self.bf16_tflops:
            return "bf16"
        if self.fp16_tflops and self.fp16_tflops > self.fp32_tflops:
            return "fp16"
        return "fp32"


class KnownModel(_Entry):
    """The config essentials of a known base model (enough to build its transformers config)."""

    aliases: list[str] = Field(default_factory=list)
    architecture: str
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int | None = Field(None, gt=0)
    head_dim: int | None = Field(None, gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    max_position: int = Field(gt=0)
    licence: str | None = None


class HostedAPI(_Entry):
    """A hosted fine-tuning service's price per million training tokens."""

    name: str
    price_per_million_tokens: float = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    as_of: str
    source: str
    min_params_b: float | None = None
    max_params_b: float | None = None

    def covers(self, params: int) -> bool:
        """Whether this price applies to a base model of `params` parameters."""
        billions = params / 1e9
        if self.min_params_b is not None and billions <= self.min_params_b:
            return False
        return self.max_params_b is None or billions <= self.max_params_b


class Rates(dict):
    """Exchange rates (USD per unit of each currency) and the files they were read from."""

    def __init__(self, usd_per_unit: dict[str, float], files: list[Path], as_of: str | None = None) -> None:
        """Rates by currency code, with the files they came from (named in error messages)."""
        super().__init__(usd_per_unit)
        self.files = files
        self.as_of = as_of


# --- reading -------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> Any:
    """Load one YAML file or raise CatalogError naming it."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f": line {mark.line + 1}" if mark is not None else ""
        raise CatalogError(f"{path}{line}: invalid YAML") from None


def _validate(cls: type[BaseModel], data: Any, where: str) -> Any:
    """Validate one entry, turning pydantic's error into one line naming the file and entry."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(entry)"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise CatalogError(f"{where}: {key}: {message}") from None


def _override_files(name: str, extra: Path | str | None) -> list[Path]:
    """The user's override files for one catalogue: $FINETUNE_HOME/<name>, then an explicit file."""
    files = []
    home = finetune_home() / name
    if home.is_file():
        files.append(home)
    if extra is not None:
        extra = Path(extra).expanduser()
        if not extra.is_file():
            raise CatalogError(f"{extra}: catalogue file not found")
        files.append(extra)
    return files


def normalise_gpu_name(name: str) -> str:
    """Lowercase alphanumerics without vendor words, so 'NVIDIA GeForce RTX 4090' matches 'rtx 4090'."""
    text = name.lower()
    for word in ("nvidia", "geforce", "tesla"):
        text = text.replace(word, "")
    return re.sub(r"[^a-z0-9]", "", text)


def load_gpus(extra: Path | str | None = None) -> list[GPU]:
    """The GPU catalogue: shipped entries, replaced or extended by $FINETUNE_HOME/gpus.yaml and `extra`."""
    by_key: dict[str, GPU] = {}
    for path in [CATALOG_DIR / "gpus.yaml", *_override_files("gpus.yaml", extra)]:
        data = _read_yaml(path) or {}
        entries = data.get("gpus") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            if path == extra and isinstance(data, dict) and "models" in data:
                continue  # an explicit --catalog file may hold only models
            raise CatalogError(f"{path}: expected a top-level 'gpus:' list")
        for index, entry in enumerate(entries):
            gpu = _validate(GPU, entry, f"{path}: gpus[{index}]")
            by_key[normalise_gpu_name(gpu.name)] = gpu
    return list(by_key.values())


def find_gpu(name: str, gpus: list[GPU]) -> GPU:
    """The catalogue GPU a user means by `name` (name, alias or unique fragment), else a did-you-mean."""
    wanted = normalise_gpu_name(name)
    for gpu in gpus:
        if wanted in (normalise_gpu_name(n) for n in [gpu.name, *gpu.aliases]):
            return gpu
    partial = [
        g for g in gpus if wanted and any(wanted in normalise_gpu_name(n) for n in [g.name, *g.aliases])
    ]
    if len(partial) == 1:
        return partial[0]
    names = [g.name for g in gpus]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    listed = "" if close else f" (known: {', '.join(names)})"
    raise CatalogError(
        f"--gpu {name!r}: not in the GPU catalogue{hint}{listed}; add it to {finetune_home() / 'gpus.yaml'}"
    )


def match_device_name(device_name: str, gpus: list[GPU]) -> GPU | None:
    """The catalogue entry for a name as CUDA reports it ('NVIDIA GeForce RTX 4090'), if any."""
    wanted = normalise_gpu_name(device_name)
    best: GPU | None = None
    best_len = 0
    for gpu in gpus:
        for candidate in [gpu.name, *gpu.aliases]:
            key = normalise_gpu_name(candidate)
            if key and key in wanted and len(key) > best_len:
                best, best_len = gpu, len(key)
    return best


def load_models(extra: Path | str | None = None) -> dict[str, KnownModel]:
    """Known models by hub id (shipped catalogue plus a `models:` mapping in the override files)."""
    models: dict[str, KnownModel] = {}
    for path in [CATALOG_DIR / "models.yaml", *_override_files("models.yaml", extra)]:
        data = _read_yaml(path) or {}
        entries = data.get("models") if isinstance(data, dict) else None
        if entries is None and path != CATALOG_DIR / "models.yaml":
            continue
        if not isinstance(entries, dict):
            raise CatalogError(f"{path}: expected a top-level 'models:' mapping of hub id to config fields")
        for model_id, entry in entries.items():
            models[str(model_id)] = _validate(KnownModel, entry, f"{path}: models.{model_id}")
    return models


def find_model(spec: str, models: dict[str, KnownModel]) -> tuple[str, KnownModel] | None:
    """The catalogue entry for a hub id or alias (case-insensitive), or None."""
    wanted = spec.strip().lower()
    for model_id, entry in models.items():
        if wanted == model_id.lower() or wanted in (a.lower() for a in entry.aliases):
            return model_id, entry
    return None


def load_rates() -> Rates:
    """Exchange rates to USD: the shipped table, replaced per currency by $FINETUNE_HOME/currencies.yaml."""
    rates: dict[str, float] = {}
    files: list[Path] = []
    as_of = None
    for path in [CATALOG_DIR / "currencies.yaml", *_override_files("currencies.yaml", None)]:
        data = _read_yaml(path) or {}
        table = data.get("usd_per_unit") if isinstance(data, dict) else None
        if not isinstance(table, dict):
            raise CatalogError(f"{path}: expected a 'usd_per_unit:' mapping like {{JPY: 0.0067}}")
        for code, value in table.items():
            if not re.fullmatch(r"[A-Z]{3}", str(code)) or not isinstance(value, (int, float)) or value <= 0:
                raise CatalogError(f"{path}: usd_per_unit.{code}: expected a 3-letter code, a positive rate")
            rates[str(code)] = float(value)
        files.append(path)
        as_of = str(data.get("as_of", as_of)) if data.get("as_of") else as_of
    return Rates(rates, files, as_of)


def currency_style(code: str) -> tuple[str | None, int]:
    """The symbol (if the catalogue has one) and number of decimals used to print amounts in `code`."""
    data = _currency_table()
    return data.get("symbols", {}).get(code), int(data.get("decimals", {}).get(code, 2))


_CURRENCY_TABLE: dict[str, Any] | None = None


def _currency_table() -> dict[str, Any]:
    """The shipped currencies.yaml, read once (formatting is called often)."""
    global _CURRENCY_TABLE
    if _CURRENCY_TABLE is None:
        _CURRENCY_TABLE = _read_yaml(CATALOG_DIR / "currencies.yaml") or {}
    return _CURRENCY_TABLE


def load_hosted_apis() -> list[HostedAPI]:
    """Hosted fine-tuning prices (reference rows)."""
    path = CATALOG_DIR / "hosted_apis.yaml"
    data = _read_yaml(path) or {}
    entries = data.get("apis") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise CatalogError(f"{path}: expected a top-level 'apis:' list")
    return [_validate(HostedAPI, e, f"{path}: apis[{i}]") for i, e in enumerate(entries)]
