"""The estimate counts the tokens training trains on: one tokenisation (finetune.data), no system prompt.

A persona recipe carries a system_prompt for inference (Modelfile, compare's prompt arm); training never
adds it to the rows, so neither may the estimate. Real tokenizer (the bundled model's), real persona rows,
a real one-epoch training run of a tiny model: its non-padding token count is the reference.
"""

from __future__ import annotations

from pathlib import Path

from finetune.estimate import count_tokens, estimate_for_training
from finetune.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "pirate-smollm2.yaml"


def _persona_recipe(model: Path, rows: Path, max_length: int = 64):
    """The pirate persona recipe on a tiny model: its system prompt kept, one short epoch."""
    recipe = load_recipe(RECIPE, [f"base_model={model}", f"dataset.path={rows}", f"dataset.max_length={max_length}",
                                  "training.epochs=1", "training.batch_size=8", "training.logging_steps=1",
                                  "training.save_steps=1000", "tracking.wandb=disabled"])
    assert recipe.system_prompt and len(recipe.system_prompt) > 100  # the prompt training must not count
    return recipe


def test_estimate_counts_the_tokens_one_epoch_of_training_sees(tiny_llama, pirate_rows, tmp_path):
    from finetune.data import load_conversations
    from finetune.train import train

    recipe = _persona_recipe(tiny_llama, pirate_rows)
    tokens = count_tokens(recipe)
    assert tokens.method == "tokenizer"
    assert tokens.truncated_rows > 0 and tokens.rows_eval > 0  # max_length 64 cuts some rows: counted as cut
    assert max(tokens.lengths) == 64
    # The rows train has already read give the same count (`finetune train` hands them in).
    again = count_tokens(recipe, conversations=load_conversations(pirate_rows))
    assert again.lengths == tokens.lengths and again.prompt_lengths == tokens.prompt_lengths

    summary = train(recipe, output_dir=tmp_path / "run", say=lambda *_: None)
    assert summary["status"] == "completed" and summary["epochs"] == 1
    assert summary["tokens"] == tokens.per_epoch, "estimate and training count different tokens"


def test_training_estimate_and_data_check_state_the_same_tokens(tiny_llama, pirate_rows, tmp_path):
    import yaml

    from finetune.data import load_conversations, read_dataset
    from finetune.data_stats import token_stats

    recipe = _persona_recipe(tiny_llama, pirate_rows, max_length=512)
    tokens = count_tokens(recipe)
    lines, fits = estimate_for_training(recipe, conversations=load_conversations(pirate_rows))
    assert fits and f"for {tokens.per_epoch:,} tokens/epoch" in lines[1]
    # `finetune data check --recipe` counts every row, training and held-out, uncut (none is cut at 512).
    path = tmp_path / "persona.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")), encoding="utf-8")
    checked = token_stats(read_dataset(pirate_rows), path)
    assert checked["truncated"] == tokens.truncated_rows == 0
    assert checked["total"] == tokens.per_epoch + sum(tokens.eval_lengths)
