"""Model cards: a Hugging Face README.md for every export, with the run's real figures and base licence."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune.compare.schema import Report, read_report

_CATALOG = Path(__file__).parent / "catalog"


@dataclass
class CardInputs:
    """Everything a card says, gathered by the exporter (pure data, so rendering is testable)."""

    title: str
    kind: str  # "adapter", "merged" or "merged-adapters"
    base_model: str  # the recipe's base_model
    base_hub_id: str
    base_local: str | None = None
    recipe_yaml: str = ""
    system_prompt: str | None = None
    dataset: str | None = None
    summary: dict[str, Any] | None = None
    compare: Report | None = None
    compare_path: str | None = None
    formats: list[str] = field(default_factory=lambda: ["safetensors"])
    files: list[str] = field(default_factory=list)
    verification: dict[str, Any] | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)  # merge-adapters: run, weight, summary


def load_licenses() -> dict[str, Any]:
    """The licence table (catalog/licenses.yaml)."""
    return yaml.safe_load((_CATALOG / "licenses.yaml").read_text(encoding="utf-8"))


def resolve_license(
    license_id: str | None, hub_id: str, table: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The base model's licence: the id finetune knows, else a hub-id pattern match; None if unknown."""
    table = table or load_licenses()
    if not license_id:
        license_id = next(
            (lic for pattern, lic in table["models"].items() if fnmatch.fnmatchcase(hub_id, pattern)), None
        )
    if not license_id:
        return None
    known = table["licenses"].get(license_id, {})
    return {
        "id": license_id,
        "name": known.get("name", license_id),
        "url": known.get("url"),
        "notes": known.get("notes"),
    }


def latest_compare(run_dir: Path) -> tuple[Report, Path] | None:
    """The newest `compare/*/report.json` of a run, read through the schema, with its path (None if none).

    A newest report that does not match the schema is a one-line error naming it: a card must not quietly
    show an older comparison's verdicts. (report.json is written atomically, so it is never half-written.)
    """
    reports = sorted((run_dir / "compare").glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    return (read_report(reports[-1]), reports[-1]) if reports else None


def _fig(value: Any) -> str:
    """A summary.json value exactly as stored (floats unrounded); None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def front_matter(inputs: CardInputs, license: dict[str, Any] | None) -> str:
    """The YAML header the Hugging Face hub reads."""
    tags = ["finetune", "lora"]
    tags += ["peft"] if inputs.kind != "merged" else ["merged"]
    tags += ["gguf"] if "gguf" in inputs.formats else []
    data: dict[str, Any] = {
        "base_model": inputs.base_hub_id,
        "library_name": "transformers" if inputs.kind == "merged" else "peft",
    }
    if license:
        data["license"] = license["id"]
    data["tags"] = tags
    if inputs.dataset:
        data["datasets"] = [inputs.dataset]
    data["pipeline_tag"] = "text-generation"
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + "---\n"


def _figures(summary: dict[str, Any]) -> list[str]:
    """The training figures table, values copied from summary.json."""
    examples = summary.get("examples") or {}
    hardware = summary.get("hardware") or {}
    cost = summary.get("cost")
    energy = summary.get("energy_wh")
    rows = [
        ("Status", _fig(summary.get("status"))),
        ("Optimizer steps", _fig(summary.get("steps"))),
        ("Training examples", _fig(examples.get("train"))),
        ("Held-out examples", _fig(examples.get("eval"))),
        ("Tokens seen", _fig(summary.get("tokens"))),
        ("Final train loss", _fig(summary.get("train_loss"))),
        ("Final eval loss", _fig(summary.get("eval_loss"))),
        ("Wall time (s)", _fig(summary.get("wall_time_s"))),
        ("Hardware", f"{_fig(hardware.get('name'))} ({_fig(hardware.get('device'))})"),
        ("Precision", _fig(summary.get("precision"))),
        ("Peak memory (MB)", _fig(summary.get("peak_memory_mb"))),
        ("Energy (Wh)", _fig(energy) if energy is not None else "not measured"),
        ("Cost", f"{_fig(cost.get('amount'))} {_fig(cost.get('currency'))}" if cost else "not priced"),
    ]
    return ["| Figure | Value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def _arena(arena: dict[str, Any]) -> list[str]:
    """The blind-arena leaderboard, rendered the way compare reports render it."""
    try:
        from finetune.arena.report import markdown_section

        text = markdown_section(arena)
        return [line.replace("## Blind arena", "### Blind arena", 1) for line in text.splitlines()]
    except (ImportError, KeyError, TypeError):  # another schema: show the data rather than nothing
        return ["### Blind arena", "", "```yaml", yaml.safe_dump(arena, sort_keys=False).rstrip(), "```"]


def _decision(inputs: CardInputs) -> list[str]:
    """"Adapter or prompt?" from the newest compare report, re-decided so later arena votes count."""
    if not inputs.compare:
        return ["## Adapter or prompt?", "", "Not compared yet: run `finetune compare` before relying on it.", ""]
    from finetune.compare.decision import decide
    from finetune.compare.report import decision_markdown

    # Decided again from the report's figures, so arena votes added since (and reports from before the
    # decision existed) get one.
    chosen = decide(inputs.compare)
    if chosen is None:
        return ["## Adapter or prompt?", "", "The comparison holds no adapter arm to decide on.", ""]
    return decision_markdown(inputs.compare.model_copy(update={"decision": chosen}))


def _comparison(inputs: CardInputs) -> list[str]:
    """The A/B section from the newest compare report, or a line saying there is none."""
    lines = ["## A/B results", ""]
    if not inputs.compare:
        return lines + ["No comparison has been run yet (`finetune compare` writes one).", ""]
    if inputs.compare_path:
        lines += [f"From `{inputs.compare_path}`.", ""]
    lines += [f"- {v}" for v in inputs.compare.verdicts] or ["The report holds no verdicts."]
    lines.append("")
    if inputs.compare.arena:
        lines += _arena(inputs.compare.arena) + [""]
    return lines


def _license_lines(inputs: CardInputs, license: dict[str, Any] | None, what: str) -> list[str]:
    """The licence section: the base model's licence carried over, or an honest 'unknown'."""
    lines = ["## Licence", ""]
    if license is None:
        return lines + [
            f"The licence of the base model `{inputs.base_hub_id}` is unknown to finetune. This {what} is a "
            "derivative of it, so the base model's terms apply: read them before you use or share it.",
            "",
        ]
    where = f" ({license['url']})" if license.get("url") else ""
    lines.append(
        f"The base model `{inputs.base_hub_id}` is released under the {license['name']}{where}. "
        f"This {what} is a derivative of it and is distributed under the same terms."
    )
    if license.get("notes"):
        lines += ["", license["notes"].strip()]
    return lines + [""]


def _usage(inputs: CardInputs) -> list[str]:
    """How to load the artefact with the usual tools (no finetune needed)."""
    gguf_files = [f for f in inputs.files if f.endswith(".gguf")]
    if "gguf" in inputs.formats:
        lines = ["## How to use", "", "```sh"]
        lora = [f for f in gguf_files if "-lora-" in f]
        base = [f for f in gguf_files if f not in lora]
        if lora:
            lines.append(f"llama-cli -m {base[0] if base else 'BASE-f16.gguf'} --lora {lora[0]}")
        elif base:
            lines.append(f"llama-cli -m {base[0]}")
        if "Modelfile" in inputs.files:
            lines.append(f"ollama create {inputs.title} -f Modelfile && ollama run {inputs.title}")
        return lines + ["```", ""]
    if inputs.kind == "merged":
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
            'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
        ]
    else:
        code = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{inputs.base_hub_id}")',
            'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")',
            'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
        ]
    return ["## How to use", "", "```python", *code, "```", ""]


def render_card(inputs: CardInputs, license: dict[str, Any] | None) -> str:
    """The whole README.md: front matter, purpose, recipe, figures, A/B results, use, limits, licence."""
    what = {"merged": "merged model", "merged-adapters": "merged adapter"}.get(inputs.kind, "adapter")
    lines = [front_matter(inputs, license), f"# {inputs.title}", ""]
    purpose = f"A LoRA {what} for `{inputs.base_hub_id}`, trained with finetune"
    if inputs.kind == "merged":
        purpose = f"`{inputs.base_hub_id}` with a LoRA adapter trained with finetune merged into its weights"
    lines.append(purpose + ".")
    if not inputs.sources:
        lines += ["", *_decision(inputs)]
    if inputs.system_prompt:
        quoted = [f"> {line}" for line in inputs.system_prompt.splitlines()]
        lines += [
            "",
            "The recipe describes the persona it was trained towards with this system prompt:",
            "",
            *quoted,
        ]
    lines.append("")
    if inputs.base_local:
        lines += [
            f"Trained against the local copy of the base model at `{inputs.base_local}` "
            f"(recipe `base_model: {inputs.base_model}`).",
            "",
        ]
    if inputs.files:
        lines += ["Files: " + ", ".join(f"`{f}`" for f in inputs.files) + ".", ""]
    if inputs.sources:
        lines += [
            "## Merged from",
            "",
            "| Run | Weight | Steps | Final train loss | Final eval loss |",
            "|---|---|---|---|---|",
        ]
        for src in inputs.sources:
            s = src.get("summary") or {}
            lines.append(
                f"| {src['run']} | {_fig(src.get('weight'))} | {_fig(s.get('steps'))} | "
                f"{_fig(s.get('train_loss'))} | {_fig(s.get('eval_loss'))} |"
            )
        lines.append("")
    if inputs.recipe_yaml:
        lines += ["## Recipe", "", "```yaml", inputs.recipe_yaml.rstrip(), "```", ""]
    if not inputs.sources:  # a merge of several runs shows their figures in "Merged from"
        lines += ["## Training figures", ""]
        if inputs.summary:
            lines += ["From the run's `summary.json`.", "", *_figures(inputs.summary), ""]
        else:
            lines += ["No `summary.json` was found for this run.", ""]
        lines += _comparison(inputs)
    if inputs.verification:
        v = inputs.verification
        lines += [
            "## Export check",
            "",
            f"Fixed prompts were run through this artefact and through the base model with the adapter "
            f"applied by peft: largest logit difference {_fig(v.get('max_abs_logit_diff'))} "
            f"(tolerance {_fig(v.get('tolerance'))}, {v.get('dtype')}).",
            "",
        ]
    lines += _usage(inputs)
    lines += [
        "## Intended use and limitations",
        "",
        f"Intended for experiments and demos in the style the training data shows. This {what} inherits the "
        "base model's knowledge, biases and failure modes; a few steps of LoRA training change its voice far "
        "more than its facts. It was evaluated only as the figures above say: check it on your own prompts "
        "before relying on it, and do not use it for medical, legal, financial or safety decisions.",
        "",
    ]
    lines += _license_lines(inputs, license, what)
    return "\n".join(lines)
