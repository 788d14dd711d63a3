"""`finetune merge-adapters`: adapters of one base model combined into one (peft's add_weighted_adapter)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune import atomic
from finetune.errors import RunError

METHODS = ("linear", "cat", "ties", "dare_ties")
EQUAL_RANK_METHODS = ("linear", "ties", "dare_ties")  # peft sums A and B matrices position by position
DEFAULT_DENSITY = 0.5
MERGED = "merged"


def _number(token: str) -> float | None:
    """A token as a float, or None."""
    try:
        return float(token)
    except ValueError:
        return None


def split_weights(positionals: list[str], weight_options: list[str]) -> tuple[list[str], list[float]]:
    """Run names and weights from the command line: numbers among the positionals are further weights."""
    from finetune.runs import resolve_run

    names, weights = [], []
    for token in weight_options:
        for part in token.replace(",", " ").split():
            value = _number(part)
            if value is None:
                raise RunError(f"--weights {token}: expected numbers like 0.7 0.3")
            weights.append(value)
    for token in positionals:
        value = _number(token)
        if value is None:
            names.append(token)
            continue
        try:
            resolve_run(token)  # a run really named like a number stays a run
            names.append(token)
        except RunError:
            weights.append(value)
    return names, weights


def check_merge_args(
    names: list[str], weights: list[float], method: str, density: float | None
) -> float | None:
    """Validate the command's arguments; returns the density to use (None where the method has none)."""
    if len(names) < 2:
        raise RunError("merge-adapters: give at least two runs to merge")
    if len(set(names)) != len(names):
        raise RunError("merge-adapters: a run is listed twice")
    if method not in METHODS:
        raise RunError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if len(weights) != len(names):
        raise RunError(f"--weights: {len(weights)} weights for {len(names)} runs (give one per run)")
    if method in ("ties", "dare_ties"):
        density = DEFAULT_DENSITY if density is None else density
        if not 0.0 < density <= 1.0:
            raise RunError(f"--density {density}: expected a fraction in (0, 1]")
        return density
    if density is not None:
        raise RunError(f"--density: only ties and dare_ties prune by density, not {method}")
    return None


def check_compatible(sources: list[dict[str, Any]], method: str) -> None:
    """Refuse adapters of different base models, and unequal ranks where the method needs equal ones."""
    first = sources[0]
    for src in sources[1:]:
        if src["base_model"] != first["base_model"]:
            raise RunError(
                f"{src['run']}: trained on {src['base_model']}, but {first['run']} on "
                f"{first['base_model']}; only adapters of the same base model can be merged"
            )
        if src["adapter_base"] != first["adapter_base"]:
            raise RunError(
                f"{src['run']}/adapter/adapter_config.json base_model_name_or_path is "
                f"{src['adapter_base']}, but {first['run']}'s is {first['adapter_base']}; "
                "only adapters of the same base model can be merged"
            )
    ranks = {src["run"]: src["r"] for src in sources}
    if method in EQUAL_RANK_METHODS and len(set(ranks.values())) > 1:
        listed = ", ".join(f"r={r} for {name}" for name, r in ranks.items())
        raise RunError(
            f"--method {method} needs adapters of equal rank ({listed}); use --method cat, which stacks them"
        )


def _source(run: str) -> dict[str, Any]:
    """What merging needs to know about one run."""
    from finetune.inference import load_run
    from finetune.runs import read_summary

    run_dir, recipe = load_run(run)
    config_path = run_dir / "adapter" / "adapter_config.json"
    if not config_path.is_file():
        raise RunError(f"{config_path}: missing (did the run finish and save its adapter?)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    return {
        "run": recipe.name,
        "dir": run_dir,
        "recipe": recipe,
        "base_model": recipe.base_model,
        "adapter_base": config.get("base_model_name_or_path"),
        "r": config.get("r"),
        "summary": read_summary(run_dir),
    }


def sources_cost(summaries: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """What training the sources cost together (compare's break-even for the merge), or None where a source's
    cost is unknown or the currencies differ."""
    costs = [(s or {}).get("cost") or {} for s in summaries]
    if not costs or any(not isinstance(c.get("amount"), (int, float)) for c in costs):
        return None
    if len({c.get("currency") for c in costs}) != 1:
        return None
    return {"amount": sum(float(c["amount"]) for c in costs), "currency": costs[0]["currency"]}


def merged_recipe_yaml(recipe: Any, name: str, config: dict[str, Any], sources: list[dict[str, Any]]) -> str:
    """recipe.yaml of a merge-adapters output: the first source's recipe (every source shares its base model),
    named for the output folder, with the merged adapter's rank; a comment names the sources."""
    from finetune.recipe import Recipe

    lora = recipe.lora.model_copy(update={"r": config.get("r", recipe.lora.r),
                                          "alpha": config.get("lora_alpha", recipe.lora.alpha)})
    # Validated (model_copy is not): a folder named "pirate blend" gives the recipe name "pirate-blend".
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "merged"
    if not name[0].isalnum():
        name = f"merged-{name}"
    merged = Recipe.model_validate({**recipe.model_dump(), "name": name, "lora": lora.model_dump()})
    names = ", ".join(str(s["run"]) for s in sources)
    return (f"# merge-adapters output: the recipe of {sources[0]['run']}, the first of {names} (merge.json says "
            f"how they were merged); nothing was trained with it\n{merged.to_yaml()}")


def merge_adapters(
    runs: list[str],
    weights: list[float],
    method: str,
    out: str | Path,
    *,
    density: float | None = None,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Merge run adapters into one PEFT adapter folder (+ model card); returns the merge report."""
    import torch

    from finetune.card import CardInputs, render_card, resolve_license
    from finetune.export import (
        base_hub_id,
        check_target,
        logits_of,
        max_abs_diff,
        verify_inputs,
        write_tokenizer,
    )
    from finetune.inference import attach_adapter, load_base
    from finetune.models import model_license

    density = check_merge_args(runs, weights, method, density)
    out_dir = Path(out)
    check_target(out_dir, force)
    sources = [_source(run) for run in runs]
    folders = [src["dir"].resolve() for src in sources]
    for i, folder in enumerate(folders):  # a run named once by name and once by path is still listed twice
        if folder in folders[:i]:
            raise RunError(f"merge-adapters: a run is listed twice ({runs[folders.index(folder)]} and {runs[i]} "
                           f"are both {sources[i]['dir']})")
    # Each source by its run folder's name (two runs of one recipe differ only there), else by its path.
    labels = [src["dir"].name for src in sources]
    for src, label in zip(sources, labels, strict=True):
        src["run"] = label if labels.count(label) == 1 else str(src["dir"])
    check_compatible(sources, method)
    recipe = sources[0]["recipe"]
    names = [f"source{i}" for i in range(len(sources))]

    model, tokenizer = load_base(recipe, "fp32")
    for name, src in zip(names, sources, strict=True):
        model = attach_adapter(model, src["dir"] / "adapter", name=name)
    inputs = verify_inputs(tokenizer)
    source_logits = {}
    for name, src in zip(names, sources, strict=True):
        model.set_adapter(name)
        source_logits[src["run"]] = logits_of(model, inputs)
    torch.manual_seed(0)  # DARE drops entries at random: the same command gives the same adapter
    model.add_weighted_adapter(names, list(weights), MERGED, combination_type=method, density=density)
    model.set_adapter(MERGED)
    model.eval()  # the new adapter's layers are created in training mode: dropout would blur the check
    merged_logits = logits_of(model, inputs)
    for name in names:
        model.delete_adapter(name)

    # The output is shaped like a run (recipe.yaml, adapter/), so that export, compare, chat and show take it as
    # they take a run; merge.json, not a summary.json, says what it is.
    with atomic.staged_dir(out_dir) as tmp:
        adapter_dir = tmp / "adapter"
        model.save_pretrained(str(adapter_dir), selected_adapters=[MERGED], safe_serialization=True)
        nested = adapter_dir / MERGED  # peft saves named adapters in a subfolder
        if nested.is_dir():
            for item in nested.iterdir():
                shutil.move(str(item), adapter_dir / item.name)
            nested.rmdir()
        (adapter_dir / "README.md").unlink(missing_ok=True)  # peft's placeholder card; ours is the folder's
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        hub_id = base_hub_id(recipe.base_model)
        config["base_model_name_or_path"] = hub_id
        atomic.write_json(adapter_dir / "adapter_config.json", config)
        write_tokenizer(tokenizer, adapter_dir)
        atomic.write_text(tmp / "recipe.yaml", merged_recipe_yaml(recipe, out_dir.name, config, sources))

        # The saved folder must load and reproduce the merged adapter exactly.
        model = attach_adapter(model, adapter_dir, name="check")
        model.set_adapter("check")
        model.eval()
        reloaded = max_abs_diff(logits_of(model, inputs), merged_logits)
        report = {
            "method": method,
            "density": density,
            "rank": config.get("r"),
            "sources": [
                {"run": s["run"], "weight": w, "r": s["r"]} for s, w in zip(sources, weights, strict=True)
            ],
            "base_model": recipe.base_model,
            "base_hub_id": hub_id,
            "max_abs_logit_diff_reloaded": reloaded,
            "max_abs_logit_diff_vs_sources": {
                run: max_abs_diff(merged_logits, logits) for run, logits in source_logits.items()
            },
            "sources_cost": sources_cost([s["summary"] for s in sources]),
        }
        atomic.write_json(tmp / "merge.json", report)
        files = sorted({p.name + ("/" if p.is_dir() else "") for p in tmp.iterdir()} | {"README.md"})
        card = CardInputs(
            title=out_dir.name,
            kind="merged-adapters",
            base_model=recipe.base_model,
            base_hub_id=hub_id,
            system_prompt=recipe.system_prompt,
            dataset=None,
            summary=None,
            files=files,
            sources=[
                {"run": s["run"], "weight": w, "summary": s["summary"]}
                for s, w in zip(sources, weights, strict=True)
            ],
            recipe_yaml="\n".join(f"# {s['run']}\n{s['recipe'].to_yaml()}" for s in sources),
        )
        licence = resolve_license(model_license(recipe.base_model), hub_id)
        atomic.write_text(tmp / "README.md", render_card(card, licence))
    say(
        f"merged {len(sources)} adapters ({method}, rank {config.get('r')}) into {out_dir}; reloaded folder "
        f"matches to {reloaded:.3g}"
    )
    report["out_dir"] = str(out_dir)
    return report
