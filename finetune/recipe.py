"""The recipe: a typed, validated YAML file; unknown keys are errors with a did-you-mean."""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finetune.errors import DataError, RecipeError

BUNDLED_DEFAULT = "bundled:smollm2-135m-instruct"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


class _Section(BaseModel):
    """A recipe section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_duration(value: str | int | float | None) -> float | None:
    """Turn '7h', '90m', '1h30m', '45s' or a number of seconds into seconds."""
    if value is None:
        return None
    if isinstance(value, bool):  # YAML's yes/true: not a number of seconds
        raise ValueError(f"expected a duration like '7h', '90m' or '1h30m', got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError("expected a positive duration")
        return float(value)
    match = _DURATION_RE.match(str(value))
    if not match or not any(match.groups()):
        raise ValueError(f"expected a duration like '7h', '90m' or '1h30m', got {value!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError("expected a positive duration")
    return total


class TokenizerConfig(_Section):
    """Tokenizer options for base models that need them."""

    use_fast: bool = True
    chat_template: str | None = None  # a name from catalog/chat_templates.yaml or a Jinja string


class DatasetConfig(_Section):
    """The training data: a JSONL file in one of the supported formats."""

    path: str
    format: Literal["auto", "messages", "alpaca", "prompt_completion"] = "auto"
    eval_fraction: float = Field(0.1, ge=0.0, le=0.5)
    max_length: int = Field(512, ge=16, le=131072)


class LoraConfigSection(_Section):
    """LoRA hyperparameters, passed to peft's LoraConfig."""

    r: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


class QuantizationConfig(_Section):
    """bitsandbytes quantisation of the frozen base weights (QLoRA when bits is 4)."""

    bits: Literal[4, 8] | None = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class TrainingConfig(_Section):
    """Optimisation, precision, checkpointing and the run's time budget."""

    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1)
    # auto: by the base model's size (trainer.choose_learning_rate; the sweep behind it: docs/compare.md).
    learning_rate: Annotated[float, Field(gt=0, lt=1)] | Literal["auto"] = "auto"
    batch_size: int = Field(8, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    gradient_checkpointing: Literal["auto", True, False] = "auto"
    seed: int = 42
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1)  # None: evaluate at the end of each epoch
    save_steps: int = Field(50, ge=1)
    save_minutes: float | None = Field(30, gt=0)
    save_total_limit: int = Field(2, ge=1)
    max_time: float | None = None  # seconds; YAML may say '7h', '90m', '1h30m'
    # With a budget (max_time or --until): time the first steps, then shorten the schedule so its decay, the
    # evaluations and the saves end inside the budget, instead of stopping mid-schedule (schedule_fit.py).
    fit_to_budget: bool = False
    divergence_patience: int = Field(3, ge=1)
    group_by_length: bool = True
    packing: Literal["auto", True, False] = "auto"  # rows end to end without padding (finetune/packing.py)
    # torch.compile each decoder layer (accelerate's regional compilation): fused elementwise work, fewer saved
    # tensors. On the AMX Xeon 1.15-1.5x faster steps and ~1.1 GB less peak for the bundled model, after a first
    # step that compiles for ~15-50 s (docs/bench.md). Off unless asked: not yet measured on other machines.
    compile: bool = False

    @field_validator("max_time", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return parse_duration(value)

    @field_validator("gradient_checkpointing", "packing", mode="before")
    @classmethod
    def _checkpointing(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return value


class Money(_Section):
    """An amount in a currency (ISO 4217 code, e.g. JPY, USD, EUR)."""

    amount: float = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class Electricity(_Section):
    """Electricity price, for runs on your own card."""

    price_per_kwh: float = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class CostConfig(_Section):
    """How a run is priced: a rental rate or electricity, and which GPU (catalogue name)."""

    gpu: str | None = None
    power_w: float | None = Field(None, gt=0)  # your machine's draw under load, where NVML cannot measure it
    hourly_rate: Money | None = None
    electricity: Electricity | None = None
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")  # display currency; default: the price's

    @model_validator(mode="after")
    def _one_price(self) -> CostConfig:
        if self.hourly_rate is not None and self.electricity is not None:
            raise ValueError("give either hourly_rate or electricity, not both")
        return self


class TrackingConfig(_Section):
    """Experiment tracking through the trainer's own wandb integration (offline by default)."""

    wandb: Literal["offline", "online", "disabled"] = "offline"
    project: str = "finetune"


class StyleConfig(_Section):
    """How to recognise the persona's voice: regular expressions matched case-insensitively."""

    markers: list[str] = Field(default_factory=list)

    @field_validator("markers")
    @classmethod
    def _regexes(cls, markers: list[str]) -> list[str]:
        for marker in markers:
            try:
                re.compile(marker)
            except re.error as exc:
                raise ValueError(f"marker {marker!r} is not a valid regular expression: {exc}") from None
        return markers


class DistributedConfig(_Section):
    """Multi-process training through accelerate."""

    strategy: Literal["none", "ddp", "fsdp", "zero2", "zero3"] = "none"

    @property
    def multi_process_strategy(self) -> str:
        """The strategy on several processes: naming none means DDP (the same run, N times faster, no sharding)."""
        return "ddp" if self.strategy == "none" else self.strategy

    def effective_strategy(self, num_processes: int) -> str:
        """The strategy a run on `num_processes` processes actually uses ("none" on one process)."""
        return self.multi_process_strategy if num_processes > 1 else "none"


class DistillConfig(_Section):
    """Context distillation (`finetune distill`): the prompted teacher's replies become dataset.path."""

    prompts: str = "bundled"  # the bundled pool ("bundled:en", "bundled:ja": one language) or a JSONL file
    n: int | None = Field(64, ge=1)  # prompts to distill (None: all)
    candidates: int = Field(4, ge=1, le=32)  # sampled replies per prompt; the best passing one is kept
    teacher: str | None = None  # None: base_model with system_prompt; a local model folder; an http(s) URL
    teacher_model: str | None = None  # the model name sent to an endpoint teacher
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.8, gt=0)
    min_style: float = Field(0.5, ge=0.0, le=1.0)
    min_content: float = Field(0.3, ge=-1.0, le=1.0)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    timeout: float = Field(120, gt=0)  # seconds per endpoint request


class Recipe(_Section):
    """A whole recipe: base model, data, LoRA, quantisation, training, cost, tracking, style."""

    name: str
    base_model: str = BUNDLED_DEFAULT
    system_prompt: str | None = None
    trust_remote_code: bool = False
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    dataset: DatasetConfig
    lora: LoraConfigSection = Field(default_factory=LoraConfigSection)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    style: StyleConfig = Field(default_factory=StyleConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    distill: DistillConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME_RE.match(name) or name in (".", ".."):
            raise ValueError(f"expected letters, digits, '.', '_' or '-' only (no path separators), got {name!r}")
        return name

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_none(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "disabled", "off")):
            return {"wandb": "disabled"}
        return value

    def to_yaml(self) -> str:
        """The resolved recipe (every default filled in) as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def sha256(self) -> str:
        """A stable hash of the resolved recipe, for summaries and caches."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()


# --- loading -------------------------------------------------------------------------------------


def _key_lines(text: str, source: str = "<recipe>") -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML mapping to its 1-based line, for error messages.

    A key given twice in one mapping is an error: YAML keeps the last silently, and a second `training:`
    block would drop the first one's settings without a word.
    """
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = str(key.value)
                sub = (*path, name)
                if name in seen and name != "<<":
                    raise RecipeError(f"{source}: line {key.start_mark.line + 1}: {'.'.join(sub)}: duplicate key "
                                      f"(first at line {lines[sub]}); YAML would keep only the last")
                seen.add(name)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _fields_of(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section that `loc` points into (for did-you-mean)."""
    current: Any = model
    for part in loc[:-1]:
        field = current.model_fields.get(str(part)) if hasattr(current, "model_fields") else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(current.model_fields) if hasattr(current, "model_fields") else []


def explain_error(error: dict[str, Any], schema: type[BaseModel]) -> str:
    """One readable clause for one pydantic error of `schema`: the dotted key, what was wrong, a did-you-mean."""
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        valid = _fields_of(schema, loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})" if valid else ""
        return f"{key}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    # A message of our own validators already names the value ("..., got '90 min'").
    shown = "" if isinstance(value, (dict, list)) or ", got " in message else f", got {value!r}"
    return f"{key}: {message}{shown}"


def _location(path: Path | str, lines: dict[tuple[str, ...], int], loc: tuple[Any, ...]) -> str:
    """'file: line N' for the deepest key of `loc` that the YAML shows."""
    keys = tuple(str(p) for p in loc if isinstance(p, str))
    while keys and keys not in lines:
        keys = keys[:-1]
    return f"{path}: line {lines[keys]}" if keys else f"{path}"


def set_override(data: dict[str, Any], assignment: str) -> tuple[str, ...]:
    """Apply one `--set a.b.c=value` to raw recipe data (value parsed as YAML); return the key path it set."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE, e.g. training.max_steps=20")
    dotted, raw = assignment.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"--set {assignment!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value
    return tuple(parts)


def parse_recipe(data: Any, source: str = "<recipe>", lines: dict[tuple[str, ...], int] | None = None,
                 set_by: dict[tuple[str, ...], str] | None = None) -> Recipe:
    """Validate raw recipe data; raise RecipeError with file, line and key on the first problem.

    `set_by`: key paths that a `--set KEY=VALUE` gave (their errors name the --set, not a line of the file).
    """
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a mapping of recipe keys at the top level")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        # A key that takes one of several kinds (a number or 'auto') fails once per kind, each under a
        # member tag ('constrained-float', "literal['auto']") that is no key: one clause names them all.
        key_loc = _key_loc(first["loc"])
        kinds = [e for e in errors if _key_loc(e["loc"]) == key_loc]
        keys = tuple(str(p) for p in key_loc if isinstance(p, str))
        given = next((set_by[keys[:n]] for n in range(len(keys), 0, -1) if keys[:n] in (set_by or {})), None)
        where = f"--set {given}" if given else _location(source, lines or {}, key_loc)
        rest = len(errors) - len(kinds)
        more = f" (and {rest} more)" if rest else ""
        if len(kinds) > 1:
            key = ".".join(str(p) for p in key_loc)
            expected = " or ".join(dict.fromkeys(_expected(e) for e in kinds))
            raise RecipeError(f"{where}: {key}: expected {expected}, got {first.get('input')!r}{more}") from None
        raise RecipeError(f"{where}: {explain_error(dict(first), Recipe)}{more}") from None


def _key_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic error location without its union-member tags (keys and list indices only)."""
    return tuple(p for p in loc if isinstance(p, int) or str(p).isidentifier())


def _expected(error: Any) -> str:
    """What one member of a union accepts, in words ('a number less than 1', "'auto'")."""
    ctx = error.get("ctx") or {}
    bounds = {"greater_than": "greater than {gt}", "greater_than_equal": "at least {ge}",
              "less_than": "less than {lt}", "less_than_equal": "at most {le}"}
    if error["type"] == "literal_error":
        return str(ctx.get("expected", error["msg"]))
    if error["type"] in bounds:
        return "a number " + bounds[error["type"]].format(**ctx)
    if error["type"].startswith(("float_", "int_")):
        return "a number"
    return str(error["msg"]).removeprefix("Input should be ")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe safely, apply `--set` overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f": line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or str(exc).splitlines()[0]
        if exc.problem and "constructor" in str(exc.problem).lower() or "could not determine a constructor" in str(exc):
            problem = "YAML tags that construct objects are not allowed in a recipe"
        raise RecipeError(f"{path}{line}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        raise RecipeError(f"{path}: the recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe keys at the top level")
    lines = _key_lines(text, str(path))
    set_by: dict[tuple[str, ...], str] = {}
    for assignment in overrides or []:
        set_by[set_override(data, assignment)] = assignment
    return parse_recipe(data, str(path), lines, set_by)


def check_dataset_path(recipe: Recipe, recipe_file: Path, overrides: list[str] | None = None) -> None:
    """Refuse a dataset.path that is not a file, naming the recipe (or the --set), the key and where it looked.

    A relative path is read from the current directory, not the recipe's folder (the README runs every
    command from the repository root), so the message says which directory that was.
    """
    path = Path(recipe.dataset.path)
    if path.is_file():
        return
    given = next((o for o in reversed(overrides or []) if o.split("=", 1)[0].strip() == "dataset.path"), None)
    where = f"--set {given}" if given else f"{recipe_file}: dataset.path"
    what = "is a folder, not a JSONL file" if path.is_dir() else "not found"
    relative = "" if path.is_absolute() else f" (relative to the current directory {Path.cwd()})"
    raise DataError(f"{where}: {path} {what}{relative}")
