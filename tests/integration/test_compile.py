"""training.compile: the decoder layers compiled (accelerate's regional compilation), training as without it."""

import json
import os
from pathlib import Path

import pytest
import torch

from finetune import estimate as E
from finetune.atomic import read_jsonl
from finetune.errors import RecipeError
from finetune.estimate.calibration import RUNS_FILE
from finetune.recipe import parse_recipe
from finetune.train import train
from tests.conftest import recipe_dict

pytestmark = pytest.mark.slow


def _losses(run_dir):
    return [row["loss"] for row in read_jsonl(run_dir / "metrics.jsonl") if row.get("loss") is not None]


def test_compiled_layers_train_as_the_eager_ones(tiny_llama, pirate_rows, tmp_path):
    from torch._dynamo.utils import counters

    runs, graphs, recipes = {}, {}, {}
    for compiled in (False, True):
        spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=3, batch_size=2, precision="fp32")
        spec["training"]["compile"] = compiled
        spec["lora"]["dropout"] = 0.1  # the compiled dropout draws its masks through an operator of its own
        run_dir = tmp_path / f"compiled-{compiled}"
        counters.clear()
        recipes[compiled] = parse_recipe(spec)
        summary = train(recipes[compiled], output_dir=run_dir, say=lambda *_: None)
        assert summary["status"] == "completed"
        runs[compiled] = _losses(run_dir)
        graphs[compiled] = counters["stats"]["unique_graphs"]
    assert graphs[False] == 0 and graphs[True] >= 1, graphs  # dynamo captured graphs only when asked to
    # The same seed draws the same first batch; fused kernels round differently, nothing more.
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-3)
    assert all(torch.isfinite(torch.tensor(runs[True])))

    # Both runs taught the estimate, each its own kind; the compiled one also how long compiling took.
    records = {r["compile"]: r for r in json.loads((Path(os.environ["FINETUNE_HOME"]) / RUNS_FILE).read_text())}
    assert set(records) == {False, True}
    assert records[True]["first_step_extra_s"] > 0 and "first_step_extra_s" not in records[False]
    for compiled in (False, True):
        learned = E.estimate(recipes[compiled]).calibration
        assert learned["run"] == str(tmp_path / f"compiled-{compiled}"), (compiled, learned)
    lines, _ = E.estimate_for_training(recipes[True])
    assert "learned from compiled run 'compiled-True'" in lines[1] and "s compiling" in lines[1], lines[1]
    # The compiling is paid once: the time estimate of a compiled run grows by exactly that much.
    runs_file = Path(os.environ["FINETUNE_HOME"]) / RUNS_FILE
    with_compiling = next(r for r in E.estimate(recipes[True]).rows if r.this_machine).hours * 3600
    runs_file.write_text(json.dumps([records[False], {**records[True], "first_step_extra_s": 0.0}]))
    without = next(r for r in E.estimate(recipes[True]).rows if r.this_machine).hours * 3600
    assert with_compiling - without == pytest.approx(records[True]["first_step_extra_s"], abs=1e-6)


def test_compile_without_a_compiler_is_refused_before_anything_is_written(tiny_llama, pirate_rows, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CXX", raising=False)
    spec = recipe_dict(str(tiny_llama), pirate_rows, max_steps=1)
    spec["training"]["compile"] = True
    with pytest.raises(RecipeError, match="training.compile: .*no compiler was found"):
        train(parse_recipe(spec), output_dir=tmp_path / "run", say=lambda *_: None)
    assert not (tmp_path / "run").exists()
