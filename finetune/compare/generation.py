"""Running arms: one base model with named adapters, batched generation, the base-output cache."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from finetune import atomic
from finetune.compare.arms import Arm
from finetune.compare.prompts import Messages, MultiTurn
from finetune.recipe import Recipe

CACHE_VERSION = 1


@dataclass(frozen=True)
class GenSettings:
    """Generation settings, recorded in the report and part of every cache key."""

    max_new_tokens: int
    long_max_new_tokens: int
    batch_size: int
    seed: int
    do_sample: bool = False
    temperature: float = 0.7
    repetition_penalty: float = 1.0  # over each reply's own tokens, never end-of-turn (compare/decoding.py)


class ArmModels:
    """The base model loaded once; adapters attached as named PEFT adapters and switched per arm."""

    def __init__(
        self, recipe: Recipe, adapters: dict[str, Path], dtype: str = "fp32", device: str = "cpu"
    ) -> None:
        from finetune.inference import attach_adapter, load_base

        self.model, self.tokenizer = load_base(recipe, dtype)
        self.peft_names: dict[str, str] = {}
        for index, (label, folder) in enumerate(adapters.items()):
            # PEFT adapter names become module keys, so run names (which may hold dots) are not used.
            name = f"adapter{index}"
            self.model = attach_adapter(self.model, folder, name)
            self.peft_names[label] = name
        # PEFT keeps adapter weights in fp32; in a bf16 model that costs a cast in every layer. Parameters
        # only: model.to(dtype) would also round buffers such as the rotary frequencies.
        from finetune.models import torch_dtype

        for param in self.model.parameters():
            param.data = param.data.to(torch_dtype(dtype))
        self.model.to(device)
        self.model.eval()

    @contextmanager
    def use(self, arm: Arm) -> Iterator[Any]:
        """Make the model answer as `arm`: its adapter switched on, or every adapter off for base arms."""
        if arm.adapter is not None:
            self.model.set_adapter(self.peft_names[arm.adapter], inference_mode=True)
            yield self.model
        elif self.peft_names:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model

    @contextmanager
    def use_rows(self, arms: list[Arm]) -> Iterator[tuple[Any, list[str] | None]]:
        """The model for a batch whose rows belong to `arms` (one per row), and each row's PEFT adapter name.

        Rows of one adapter (or none) run as that arm does alone (names None); rows that mix adapters, or
        adapter and base rows, run as PEFT's mixed-adapter batch (`__base__` marks a row without one).
        """
        if len({arm.adapter for arm in arms}) <= 1:
            with self.use(arms[0]) as model:
                yield model, None
        else:
            yield self.model, [self.peft_names[a.adapter] if a.adapter else "__base__" for a in arms]


def with_system(messages: Messages, arm: Arm, system_prompt: str | None) -> Messages:
    """The messages an arm sends: the persona system prompt first for prompt arms."""
    if arm.prompt and system_prompt:
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


def generate_rows(
    models: ArmModels,
    rows: list[tuple[Arm, Messages]],
    system_prompt: str | None,
    settings: GenSettings,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    streamer: Any = None,
) -> list[dict[str, Any]]:
    """One reply per (arm, conversation) row: {text, prompt_tokens, completion_tokens, latency_s, s_per_token}.

    Rows of different arms share batches (PEFT's mixed-adapter batches), so several arms cost about what
    one does where a batch is not full. Results come back in input order.
    """
    from finetune.compare.decoding import processors
    from finetune.inference import generate, stop_ids

    if not rows:
        return []
    sent = [with_system(c, arm, system_prompt) for arm, c in rows]
    # Batch prompts of similar length together: less padding, same results per prompt order.
    order = sorted(range(len(sent)), key=lambda i: len(json.dumps(sent[i], ensure_ascii=False)))
    with models.use_rows([rows[i][0] for i in order]) as (model, adapter_names):
        results = generate(
            model,
            models.tokenizer,
            [sent[i] for i in order],
            max_new_tokens=max_new_tokens,
            batch_size=settings.batch_size,
            seed=settings.seed,
            do_sample=settings.do_sample,
            temperature=settings.temperature,
            # The same repetition control for every arm: decoding must not favour one.
            processors=processors(settings.repetition_penalty, stop_ids(models.tokenizer)),
            adapter_names=adapter_names,
            min_new_tokens=min_new_tokens,
            streamer=streamer,
        )
    out: list[dict[str, Any]] = [{}] * len(sent)
    for i, result in zip(order, results, strict=True):
        out[i] = asdict(result)
    # Time per decoding step of each batch: its wall time over its longest reply (what streaming feels like).
    for start in range(0, len(order), settings.batch_size):
        chunk = order[start : start + settings.batch_size]
        steps = max(1, max(out[i]["completion_tokens"] for i in chunk))
        for i in chunk:
            out[i]["s_per_token"] = out[i]["latency_s"] / steps
    return out


def generate_replies(
    models: ArmModels,
    arm: Arm,
    conversations: list[Messages],
    system_prompt: str | None,
    settings: GenSettings,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """One arm's reply to each conversation, in batches of that arm alone (so its latency is its own)."""
    return generate_rows(models, [(arm, c) for c in conversations], system_prompt, settings, max_new_tokens)


def generate_for_arms(
    models: ArmModels,
    arms: list[Arm],
    conversations: list[Messages],
    system_prompt: str | None,
    settings: GenSettings,
    max_new_tokens: int,
) -> dict[str, list[dict[str, Any]]]:
    """Every arm's reply to each conversation, the arms sharing batches; by arm name, in input order."""
    rows = [(arm, c) for arm in arms for c in conversations]
    out = generate_rows(models, rows, system_prompt, settings, max_new_tokens)
    n = len(conversations)
    return {arm.name: out[k * n : (k + 1) * n] for k, arm in enumerate(arms)}


def generate_conversations(
    models: ArmModels,
    arms: list[Arm],
    conversations: list[MultiTurn],
    system_prompt: str | None,
    settings: GenSettings,
) -> dict[str, list[dict[str, Any]]]:
    """Multi-turn runs: each arm's own replies are fed back; every arm's conversations advance one turn per batch.

    Returns, by arm name, one record per reply: {prompt_id, turn, conversation (without system), text, ...}.
    """
    histories: dict[tuple[str, str], Messages] = {(arm.name, c.id): [] for arm in arms for c in conversations}
    records: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in arms}
    for turn in range(max((len(c.turns) for c in conversations), default=0)):
        active = [(arm, c) for arm in arms for c in conversations if turn < len(c.turns)]
        for arm, c in active:
            histories[arm.name, c.id].append({"role": "user", "content": c.turns[turn]})
        replies = generate_rows(
            models,
            [(arm, histories[arm.name, c.id]) for arm, c in active],
            system_prompt,
            settings,
            settings.max_new_tokens,
        )
        for (arm, c), reply in zip(active, replies, strict=True):
            history = histories[arm.name, c.id]
            records[arm.name].append({"prompt_id": c.id, "turn": turn, "conversation": list(history), **reply})
            history.append({"role": "assistant", "content": reply["text"]})
    return records


class OutputCache:
    """Results of arms without an adapter (base and prompt), kept across compare runs.

    Key: base model identity + what is computed + arm (its system prompt) + prompt-set hash + settings.
    Adapter arms are never cached: an adapter can be retrained under the same name.
    """

    def __init__(self, folder: Path | None, identity: dict[str, Any]) -> None:
        self.folder = folder
        self.identity = identity
        self.hits: list[str] = []

    def key(
        self, what: str, arm: Arm, system_prompt: str | None, items_hash: str, settings: dict[str, Any]
    ) -> str:
        """The cache key of one computation."""
        payload = {
            "version": CACHE_VERSION,
            "identity": self.identity,
            "what": what,
            "arm": arm.name,
            "system_prompt": system_prompt if arm.prompt else None,
            "items": items_hash,
            "settings": settings,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[
            :32
        ]

    def has(
        self, what: str, arm: Arm, system_prompt: str | None, items_hash: str, settings: dict[str, Any]
    ) -> bool:
        """Whether get_or_compute would answer from the cache (the time budget counts such work as free)."""
        if self.folder is None or arm.uses_adapter:
            return False
        return (self.folder / f"{self.key(what, arm, system_prompt, items_hash, settings)}.json").is_file()

    def get_or_compute(
        self,
        what: str,
        arm: Arm,
        system_prompt: str | None,
        items_hash: str,
        settings: dict[str, Any],
        compute: Callable[[], Any],
    ) -> Any:
        """A cached result for base-model arms, else compute it (and store it atomically)."""
        if self.folder is None or arm.uses_adapter:
            return compute()
        path = self.folder / f"{self.key(what, arm, system_prompt, items_hash, settings)}.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.hits.append(f"{what}/{arm.name}")
                return data["result"]
            except (OSError, ValueError, KeyError):
                pass  # a damaged entry is recomputed and overwritten
        result = compute()
        atomic.write_json(path, {"what": what, "arm": arm.name, "result": result})
        return result


def resolve_dtype(requested: str) -> tuple[str, str]:
    """(dtype, device) for inference: `auto` is bf16 where bf16 matmuls are measured fast, else fp32."""
    from finetune import hardware
    from finetune.compare import CompareError

    if requested not in ("auto", "fp32", "bf16"):
        raise CompareError(f"--dtype {requested}: expected auto, fp32 or bf16")
    hw = hardware.detect()
    if requested == "auto":
        requested = "bf16" if hw.bf16_fast else "fp32"
    return requested, hw.device


def model_identity(recipe: Recipe, dtype: str, device: str) -> dict[str, Any]:
    """What identifies the base model's outputs: spec, config and weights file, dtype, device, versions."""
    from importlib.metadata import version

    from finetune.models import resolve_base_model

    source = resolve_base_model(recipe.base_model)
    if Path(source).exists():
        # The real folder, not the path it was reached by: a FINETUNE_HOME whose models/ is a link to a shared
        # folder (as every test's is) holds the same weights, and the cache must say so.
        source = str(Path(source).resolve())
    identity: dict[str, Any] = {
        "dtype": dtype,
        "device": device,
        "base_model": recipe.base_model,
        "source": source,
        "torch": version("torch"),
        "transformers": version("transformers"),
    }
    folder = Path(source)
    for name in ("config.json", "model.safetensors"):
        path = folder / name
        if path.is_file():
            stat = path.stat()
            identity[name] = f"{stat.st_size}-{int(stat.st_mtime)}"
    identity["chat_template"] = recipe.tokenizer.chat_template
    return identity
