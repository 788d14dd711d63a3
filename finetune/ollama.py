"""Ollama Modelfiles: the Go TEMPLATE that renders exactly what the model was trained on, and its stop texts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from finetune.errors import ModelError
from finetune.gotemplate import ollama_values, render

_CATALOG = Path(__file__).parent / "catalog" / "ollama_templates.yaml"
# Probe conversations: with and without a system text, several turns, so each template part is exercised.
_PROBES = (
    [{"role": "system", "content": "SYSTEM-PROBE-7"}, {"role": "user", "content": "USER-PROBE-7"}],
    [
        {"role": "system", "content": "SYSTEM-PROBE-7"},
        {"role": "user", "content": "USER-PROBE-7"},
        {"role": "assistant", "content": "ASSISTANT-PROBE-7"},
        {"role": "user", "content": "USER-PROBE-8"},
    ],
    [{"role": "user", "content": "USER-PROBE-7"}],
)


def hf_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The training-side prompt text (chat template, system folded where it has no system role), minus BOS.

    A template that writes `bos_token` leaves BOS to the runtime, which adds it as a token (llama.cpp and Ollama
    do), so that leading text is not template text. A template that spells out its first marker keeps it.
    """
    from finetune.data import render_chat

    text = render_chat(tokenizer, messages, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    uses_bos = "bos_token" in (getattr(tokenizer, "chat_template", None) or "")
    return text[len(bos) :] if uses_bos and bos and text.startswith(bos) else text


def default_system(tokenizer: Any) -> str | None:
    """The system text a chat template inserts when a conversation has none (Qwen2.5's "You are Qwen..."), if any."""
    with_probe = hf_prompt(tokenizer, _PROBES[0])
    bare = hf_prompt(tokenizer, _PROBES[2])
    head, _, tail = with_probe.partition("SYSTEM-PROBE-7")
    if bare != with_probe and bare.startswith(head) and bare.endswith(tail) and len(bare) > len(head) + len(tail):
        return bare[len(head) : len(bare) - len(tail)]
    return None


def catalog() -> dict[str, dict[str, Any]]:
    """The known Ollama templates (catalog/ollama_templates.yaml)."""
    return yaml.safe_load(_CATALOG.read_text(encoding="utf-8"))


def choose_template(tokenizer: Any) -> tuple[str, str, list[str], str | None]:
    """(name, Go template, stop texts, default system) of the catalog template that renders like the HF one."""
    eos = tokenizer.eos_token or ""
    fallback = default_system(tokenizer)
    for name, entry in catalog().items():
        template = entry["template"].replace("{eos}", eos)
        try:
            same = all(
                render(template, ollama_values(probe if probe[0]["role"] == "system" or not fallback
                                               else [{"role": "system", "content": fallback}, *probe]))
                == hf_prompt(tokenizer, probe)
                for probe in _PROBES
            )
        except Exception:  # a template that raises on a probe is not this one
            same = False
        if same:
            stops = list(dict.fromkeys(s.replace("{eos}", eos) for s in entry["stop"] if s.replace("{eos}", eos)))
            return name, template, stops, fallback
    raise ModelError(
        f"chat template: no Ollama template in {_CATALOG.name} renders it the same way "
        f"(known: {', '.join(catalog())}); export without --ollama and write the Modelfile's TEMPLATE by hand"
    )


def _quoted(text: str) -> str:
    """A Modelfile triple-quoted value (which cannot itself hold three double quotes)."""
    return '"""' + text.replace('"""', "'''") + '"""'


def modelfile_text(tokenizer: Any, model_file: str, adapter_file: str | None, system_prompt: str | None) -> str:
    """An Ollama Modelfile: FROM (and ADAPTER), TEMPLATE matching the training template, SYSTEM, stops."""
    name, template, stops, fallback = choose_template(tokenizer)
    lines = [f"FROM ./{model_file}"]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    lines.append(f"# chat format: {name} (renders the same prompts as the model's Hugging Face chat template)")
    lines.append(f"TEMPLATE {_quoted(template)}")
    # What training rendered: a row without a system turn gets the template's own default (Ollama sends SYSTEM
    # when a request has none). The recipe's persona prompt is compare's `adapter+prompt` arm, not the adapter
    # as trained: sending it by default made Ollama answer unlike llama.cpp, transformers and `finetune chat`.
    if fallback:
        lines.append(f"SYSTEM {_quoted(fallback)}")
    if system_prompt:
        lines.append("# The recipe's persona prompt (compare's adapter+prompt arm). To send it with every request")
        lines.append("# that has no system message of its own, put this in place of the SYSTEM line above:")
        lines += [f"# {line}" if line else "#" for line in f"SYSTEM {_quoted(system_prompt)}".splitlines()]
    lines += [f"PARAMETER stop {_quoted(s) if chr(10) in s or chr(34) in s else chr(34) + s + chr(34)}" for s in stops]
    return "\n".join(lines) + "\n"
