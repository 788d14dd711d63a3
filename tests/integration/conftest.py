"""Integration fixtures: a real pirate adapter trained once per session on the bundled model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIRATE_STEPS = 64


@dataclass
class PirateRun:
    """A finished training run: its folder, its resolved recipe file and its summary."""

    run_dir: Path
    recipe_path: Path
    summary: dict[str, Any]


@pytest.fixture(scope="session")
def pirate_run(tmp_path_factory, bundled_dir) -> PirateRun:
    """The pirate recipe trained for real (finetune.train.train) long enough for the voice to show.

    64 steps of batch 8 at max_length 128 on datasets/pirate.jsonl: about 1.5 epochs, 1.5-2.5 s per
    step on two CPU cores. Its recipe.yaml splits the data exactly as compare will.
    """
    import torch

    from finetune.recipe import load_recipe
    from finetune.train import train

    before = torch.get_num_threads()
    # Two shared cores: one intra-op thread avoids oversubscription stalls when other jobs run.
    torch.set_num_threads(1)
    try:
        recipe = load_recipe(
            ROOT / "recipes" / "pirate-smollm2.yaml",
            [
                f"dataset.path={ROOT / 'datasets' / 'pirate.jsonl'}",
                "dataset.max_length=128",
                "tracking.wandb=disabled",
                "training.logging_steps=8",
                "training.save_steps=100000",
                "training.save_minutes=null",
                "training.max_time=null",  # the demo's time budget would make the step count machine-dependent
            ],
        )
        run_dir = tmp_path_factory.mktemp("pirate-run") / "pirate-smollm2"
        summary = train(recipe, output_dir=run_dir, max_steps=PIRATE_STEPS, say=lambda *_: None)
    finally:
        torch.set_num_threads(before)
    assert summary["status"] == "completed", summary.get("message")
    return PirateRun(run_dir=run_dir, recipe_path=run_dir / "recipe.yaml", summary=summary)
