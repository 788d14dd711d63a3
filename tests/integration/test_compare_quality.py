"""Answer quality on real greedy replies of the bundled model: a loop is flagged, a clean answer is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.compare import quality

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def replies():
    """Greedy fp32 replies of SmolLM2-135M-Instruct (no adapter, no system prompt) to two prompts."""
    import torch

    from finetune.inference import generate, load_base
    from finetune.recipe import load_recipe

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores
    try:
        model, tokenizer = load_base(load_recipe(ROOT / "recipes" / "pirate-smollm2.yaml"), "fp32")
        prompts = [
            [{"role": "user", "content": "How do I boil an egg?"}],  # loops: "Boil an egg:\n\n" to the limit
            [{"role": "user", "content": "What is the capital of France?"}],
        ]
        return generate(model, tokenizer, prompts, max_new_tokens=48, batch_size=2)
    finally:
        torch.set_num_threads(before)


def test_a_real_loop_is_flagged_and_a_real_answer_is_not(replies):
    loop, clean = replies
    assert quality.is_loop(loop.text), loop.text
    assert not quality.ended_at_eot(loop.completion_tokens, 48)  # it ran to the token limit
    assert quality.distinct_n(loop.text) < 0.5
    assert not quality.is_loop(clean.text), clean.text
    assert "Paris" in clean.text and quality.ended_at_eot(clean.completion_tokens, 48)
    # Content kept: the clean answer is close to a reference answer, the loop is not (markers removed).
    kept = quality.content_kept([clean.text, loop.text], ["Paris is the capital of France.",
                                                          "Paris is the capital of France."])
    assert kept[0] > 0.7 > kept[1]
