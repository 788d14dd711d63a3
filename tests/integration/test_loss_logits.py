"""compute_loss builds logits only at labelled positions: the loss must equal a full-vocabulary loss everywhere."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from finetune.data import collate, load_conversations, tokenize_conversations
from finetune.recipe import parse_recipe
from finetune.trainer import _trainer_class
from tests.conftest import recipe_dict

pytestmark = pytest.mark.slow


def _batch(bundled_dir, pirate_rows):
    """Eight real rows of the pirate data, right-padded by finetune's collate (rows of different lengths)."""
    from finetune.models import load_tokenizer

    recipe = parse_recipe(recipe_dict(str(bundled_dir), pirate_rows))
    tokenizer = load_tokenizer(recipe)
    rows = tokenize_conversations(tokenizer, load_conversations(pirate_rows)[:8], 128)
    batch = collate([rows[i] for i in range(len(rows))], pad_id=tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any(), "the rows should differ in length, so some positions are padding"
    return batch


def test_loss_at_labelled_positions_equals_the_full_vocabulary_loss(bundled_dir, pirate_rows):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32).eval()
    batch = _batch(bundled_dir, pirate_rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        full = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1))
        # finetune's compute_loss itself, on the same model and batch (the trainer around it is not needed).
        trainer = SimpleNamespace(
            args=SimpleNamespace(bf16=False, device=torch.device("cpu"), gradient_checkpointing=False,
                                 average_tokens_across_devices=False),
        )
        ours = _trainer_class().compute_loss(trainer, model, dict(batch))
    assert abs(float(ours) - float(full)) < 1e-6, (float(ours), float(full))
