"""summary.json's peak memory per phase, from a real tiny run: every phase measured, each on its own counter."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from finetune.recipe import parse_recipe
from finetune.telemetry import peak_memory_mb, reset_peak_memory
from finetune.train import train
from tests.conftest import recipe_dict

BURST_MB = 600


class Burst(TrainerCallback):
    """Holds BURST_MB of written memory for a moment at the second step: only the train phase may see it."""

    rss_at_train_begin = 0.0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.rss_at_train_begin = _rss_mb()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == 2:
            import torch

            burst = torch.ones(BURST_MB * 2**20 // 4)  # written, so resident (untouched pages would not be)
            del burst


def _rss_mb() -> float:
    """The process's resident memory now, in MB."""
    from pathlib import Path

    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_each_phase_has_its_own_peak(tiny_llama, pirate_rows, tmp_path):
    if not reset_peak_memory("cpu"):
        pytest.skip("this kernel does not let a process restart its peak RSS (/proc/self/clear_refs)")
    recipe = parse_recipe(recipe_dict(str(tiny_llama), pirate_rows, max_steps=3))
    burst = Burst()
    summary = train(recipe, output_dir=tmp_path / "run", callbacks=[burst], say=lambda *_: None)
    phases = summary["peak_memory_by_phase_mb"]
    assert summary["status"] == "completed" and set(phases) == {"load", "train", "eval", "save"}
    assert all(phases[p] is not None and phases[p] > 0 for p in phases), phases
    # Training holds what loading left (the model, the data) and more; the burst is seen by training alone.
    assert phases["train"] >= burst.rss_at_train_begin + BURST_MB * 0.9, (phases, burst.rss_at_train_begin)
    for phase in ("load", "eval", "save"):
        assert phases[phase] < phases["train"] - BURST_MB / 2, (phase, phases)
    assert summary["peak_memory_mb"] == max(phases.values())
    # After the run the process's own counter is this run's last phase's, not the whole run's peak.
    assert peak_memory_mb("cpu")["peak_memory_mb"] < phases["train"]
