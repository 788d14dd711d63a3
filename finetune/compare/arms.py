"""Arms of a comparison: base, prompt, adapter and adapter+prompt, parsed from --arms."""

from __future__ import annotations

from dataclasses import dataclass

from finetune.compare import CompareError

DEFAULT_ARMS = "base,prompt,adapter,adapter+prompt"
PROMPT_SUFFIX = "+prompt"


@dataclass(frozen=True)
class Arm:
    """One way of answering: the base model or an adapter, with or without the persona system prompt."""

    name: str
    adapter: str | None  # the adapter's label (its run name), None for the bare base model
    prompt: bool

    @property
    def uses_adapter(self) -> bool:
        """Whether the arm runs with an adapter switched on."""
        return self.adapter is not None


def _adapter_arm_name(label: str, adapters: list[str], prompt: bool) -> str:
    """The canonical name of an adapter arm."""
    core = "adapter" if len(adapters) == 1 else f"adapter:{label}"
    return core + (PROMPT_SUFFIX if prompt else "")


def parse_arms(spec: str | None, adapters: list[str]) -> list[Arm]:
    """Parse a comma-separated --arms value; `adapter` means every adapter when there are several."""
    spec = DEFAULT_ARMS if spec is None else spec  # `--arms ''` names no arm: refused below, not the defaults
    arms: list[Arm] = []
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        prompt = raw.endswith(PROMPT_SUFFIX)
        core = raw[: -len(PROMPT_SUFFIX)] if prompt else raw
        if core == "base" and not prompt:
            arms.append(Arm("base", None, False))
        elif core == "prompt" and not prompt:
            arms.append(Arm("prompt", None, True))
        elif core == "adapter" or core.startswith("adapter:"):
            if not adapters:
                raise CompareError(f"--arms {raw}: an adapter arm needs --adapter RUN")
            if core == "adapter":
                labels = adapters
            else:
                label = core.split(":", 1)[1]
                if label not in adapters:
                    raise CompareError(
                        f"--arms {raw}: no adapter named {label!r} (adapters: {', '.join(adapters)})"
                    )
                labels = [label]
            arms.extend(Arm(_adapter_arm_name(lb, adapters, prompt), lb, prompt) for lb in labels)
        else:
            raise CompareError(
                f"--arms {raw}: unknown arm (expected base, prompt, adapter, adapter+prompt, "
                "adapter:<run> or adapter:<run>+prompt)"
            )
    unique: dict[str, Arm] = {}
    for arm in arms:
        unique.setdefault(arm.name, arm)
    if not unique:
        raise CompareError(f"--arms {spec!r}: no arms given")
    return list(unique.values())
