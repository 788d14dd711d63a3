"""Every shipped recipe loads, validates, documents itself and points at a shipped dataset."""

from pathlib import Path

import pytest

from finetune.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_documents_itself(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(path)
    assert recipe.name == path.stem, "the run folder name should match the recipe file name"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line.lower())
    block = "\n".join(header)
    assert len(header) >= 3, "a recipe starts with a comment block saying what it does"
    assert "hardware:" in block and "run:" in block, "the header says what hardware it needs and how to run it"
    # A distill recipe's dataset is written by `finetune distill`, not shipped.
    assert recipe.distill or (ROOT / recipe.dataset.path).is_file(), f"{recipe.dataset.path} is not shipped"
    assert not recipe.trust_remote_code
