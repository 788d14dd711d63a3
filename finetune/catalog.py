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


# Words that name the maker, never the card: NVIDIA's own device names carry them ('NVIDIA GeForce RTX 4090').
_VENDOR_WORDS = ("nvidia", "geforce", "tesla")
# A series prefix: 'RTX 4090' and '4090' name the same card.
_SERIES = ("rtx", "gtx")
# How a card is mounted. Where a catalogue entry names one (H100's aliases say SXM), another is another card: the
# entry's 989 dense bf16 TFLOPS and 700 W are the SXM's; the PCIe card is slower and draws less.
_FORM_FACTORS = ("sxm", "pcie")
# The kind of memory ('NVIDIA H100 80GB HBM3'): the card's, never a different card's.
_MEMORY_KIND = re.compile(r"(hbm|gddr)\d*[ex]?")
_MEMORY_SIZE = re.compile(r"(\d+)gb")
# Words that qualify a model, never start a model code: 'ti16gb' is not one.
_QUALIFIERS = ("ti", "super", "gb")
# CUDA reports a little less than the nominal size (a 16 GB RTX 4070 Ti SUPER: 16,852,516,864 bytes, 15.7 GiB, in a
# public deviceQuery); a board of another size is a third or more away (8 against 16 GB, 40 against 80).
MEMORY_TOLERANCE = 0.15


def normalise_gpu_name(name: str) -> str:
    """Lowercase alphanumerics without vendor words, so 'NVIDIA GeForce RTX 4090' matches 'rtx 4090'."""
    text = name.lower()
    for word in _VENDOR_WORDS:
        text = text.replace(word, "")
    return re.sub(r"[^a-z0-9]", "", text)


def gpu_name_words(name: str) -> tuple[str, ...]:
    """A GPU name as the words that tell cards apart: 'NVIDIA A100-SXM4-80GB' -> ('a100', 'sxm', '80gb').

    Vendor words go; a model code stays whole ('a100', 'l40s', 'a10g', 'h100'); a qualifier glued to a number
    comes apart ('4060ti' -> '4060', 'ti'), as does a series glued to a model ('rtxa6000' -> 'rtx', 'a6000');
    a memory size is one word ('16 GB' -> '16gb'); 'sxm4'/'sxm5' is the form factor 'sxm'.
    """
    text = name.lower()
    for word in _VENDOR_WORDS:
        text = text.replace(word, " ")
    words: list[str] = []
    for chunk in re.findall(r"[a-z0-9]+", text):
        runs = re.findall(r"[a-z]+|\d+", chunk)
        i = 0
        while i < len(runs):
            run = runs[i]
            series = next((s for s in _SERIES if run.startswith(s) and len(run) > len(s)), None)
            if series:
                words.append(series)
                run = run[len(series):]
            if run.isalpha() and run not in (*_SERIES, *_QUALIFIERS) and i + 1 < len(runs):
                # letters then digits, and at most one letter more: a model code (a100, l40s, a10g, sxm4, hbm3e)
                run += runs[i + 1]
                i += 1
                if i + 1 < len(runs) and len(runs[i + 1]) == 1:
                    run += runs[i + 1]
                    i += 1
            words.append(run)
            i += 1
    merged: list[str] = []
    for word in words:
        if word == "gb" and merged and merged[-1].isdigit():
            merged[-1] += "gb"  # '16 GB' or '16GB': one memory size
        else:
            merged.append(re.sub(r"^sxm\d*$", "sxm", word))
    return tuple(merged)


def _names_of(gpu: GPU) -> list[tuple[str, ...]]:
    """The words of each name the catalogue gives a card (its name and aliases)."""
    return [gpu_name_words(n) for n in [gpu.name, *gpu.aliases]]


def _only_more_of_the_same(extra: list[str], gpu: GPU) -> bool:
    """Whether words a name has beyond one of `gpu`'s names leave it meaning `gpu`, not another card.

    A series prefix, the kind of memory, the card's own memory size and, where the catalogue names no form
    factor for the card, its form factor say nothing new; any other word (Ti, SUPER, S, a memory size the card
    does not have, NVL, Laptop, D) names another card.
    """
    forms = {w for words in _names_of(gpu) for w in words if w in _FORM_FACTORS}
    for word in extra:
        size = _MEMORY_SIZE.fullmatch(word)
        if word in _SERIES or _MEMORY_KIND.fullmatch(word):
            continue
        if size is not None and int(size.group(1)) == round(gpu.memory_gb):
            continue
        if word in _FORM_FACTORS and (not forms or word in forms):
            continue
        return False
    return True


def _minus(words: tuple[str, ...], name: tuple[str, ...]) -> list[str] | None:
    """`words` without each word of `name` once; None unless `name`'s words are all among them."""
    rest = list(words)
    for word in name:
        if word not in rest:
            return None
        rest.remove(word)
    return rest


def _says_more(words: tuple[str, ...], gpu: GPU) -> int | None:
    """The length of the longest of `gpu`'s names whose words `words` holds with nothing beside them that names
    another card (CUDA's 'NVIDIA H100 80GB HBM3' for 'H100'); None where none does."""
    fitting = [len(name) for name in _names_of(gpu)
               if name and (extra := _minus(words, name)) is not None and _only_more_of_the_same(extra, gpu)]
    return max(fitting, default=None)


def _says_less(words: tuple[str, ...], gpu: GPU) -> bool:
    """Whether `words` are one of `gpu`'s names short of a series prefix only ('4090' for 'RTX 4090')."""
    return bool(words) and any((rest := _minus(name, words)) is not None and all(w in _SERIES for w in rest)
                               for name in _names_of(gpu))


def _says_nothing_alone(word: str) -> bool:
    """Whether a word qualifies a card rather than names its model (RTX, Ti, SUPER, 80GB, PCIe, HBM3)."""
    return (word in (*_SERIES, *_QUALIFIERS, *_FORM_FACTORS) or bool(_MEMORY_SIZE.fullmatch(word))
            or bool(_MEMORY_KIND.fullmatch(word)))


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
    """The catalogue GPU a user means by `name`, else a CatalogError with a did-you-mean.

    `name` is a card's name or alias (any case, spacing or vendor words), the same short of a series prefix
    ('4090'), or the same with words that say nothing new ('H100 80GB HBM3', 'A100-SXM4-40GB'). A name
    missing a word that tells cards apart ('4060' for the RTX 4060 Ti, 'L40' for the L40S) is another card: it
    is refused, never read as the nearest one. An alias is the catalogue's own choice ('a100' is the 80 GB card).
    """
    wanted = normalise_gpu_name(name)
    for gpu in gpus:
        if wanted and wanted in (normalise_gpu_name(n) for n in [gpu.name, *gpu.aliases]):
            return gpu
    words = gpu_name_words(name)
    matches = [g for g in gpus if _says_less(words, g) or _says_more(words, g) is not None]
    if len(matches) == 1:
        return matches[0]
    where = f"add it to {finetune_home() / 'gpus.yaml'}"
    if matches:
        raise CatalogError(f"--gpu {name!r}: could be any of {', '.join(repr(g.name) for g in matches)}; name one")
    # Cards whose names hold what was typed ('4060' in 'RTX 4060 Ti 16GB'), or share its model ('H100' for 'h100
    # pcie'), are the likeliest meaning; they are other cards, so they are named, never taken.
    model = {w for w in words if not _says_nothing_alone(w)}
    kin = [g.name for g in gpus
           if (wanted and any(wanted in normalise_gpu_name(n) for n in [g.name, *g.aliases]))
           or model & {w for n in _names_of(g) for w in n}]
    if kin:
        hint = (f" (did you mean {', '.join(repr(c) for c in kin)}? Ti, SUPER, S, a memory size or PCIe/SXM make"
                " another card)")
    elif close := difflib.get_close_matches(name, [g.name for g in gpus], n=3, cutoff=0.4):
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)"
    else:
        hint = f" (known: {', '.join(g.name for g in gpus)})"
    raise CatalogError(f"--gpu {name!r}: not in the GPU catalogue{hint}; {where}")


def match_device_name(device_name: str, gpus: list[GPU], memory_gb: float | None = None) -> GPU | None:
    """The catalogue entry for a name as CUDA reports it ('NVIDIA GeForce RTX 4090'); None for another card.

    The name must contain one of the entry's names and nothing that names another card beside it (find_gpu's
    rule): 'NVIDIA A100-PCIE-40GB' is the A100 40GB, 'NVIDIA L40' and 'NVIDIA GeForce RTX 4070 Ti SUPER' are
    not the L4 or the RTX 4070. `memory_gb` (what the card reports, GiB) must be the entry's within 15%: CUDA
    gives an RTX 4060 Ti one name for its 8 and 16 GB boards. An unknown card is better than another's figures.
    """
    words = gpu_name_words(device_name)
    scored = [(n, g) for g in gpus if (n := _says_more(words, g)) is not None
              and (memory_gb is None or abs(memory_gb - g.memory_gb) <= MEMORY_TOLERANCE * g.memory_gb)]
    if not scored:
        return None
    best = max(n for n, _ in scored)
    top = [g for n, g in scored if n == best]
    return top[0] if len(top) == 1 else None  # two cards named alike: neither's figures are safe


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
