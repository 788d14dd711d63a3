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

    from finetune.compare.decoding import DEFAULT_REPETITION_PENALTY, processors
    from finetune.inference import generate, load_base, stop_ids
    from finetune.recipe import load_recipe

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores
    try:
        model, tokenizer = load_base(load_recipe(ROOT / "recipes" / "pirate-smollm2.yaml"), "fp32")
        prompts = [
            [{"role": "user", "content": "How do I boil an egg?"}],  # loops: "Boil an egg:\n\n" to the limit
            [{"role": "user", "content": "What is the capital of France?"}],
        ]
        plain = generate(model, tokenizer, prompts, max_new_tokens=48, batch_size=2)
        penalty = processors(DEFAULT_REPETITION_PENALTY, stop_ids(tokenizer))
        controlled = generate(model, tokenizer, prompts, max_new_tokens=48, batch_size=2, processors=penalty)
        return plain, controlled
    finally:
        torch.set_num_threads(before)


def test_a_real_loop_is_flagged_and_a_real_answer_is_not(replies):
    loop, clean = replies[0]
    assert quality.is_loop(loop.text), loop.text
    assert not quality.ended_at_eot(loop.completion_tokens, 48)  # it ran to the token limit
    assert quality.distinct_n(loop.text) < 0.5
    assert not quality.is_loop(clean.text), clean.text
    assert "Paris" in clean.text and quality.ended_at_eot(clean.completion_tokens, 48)
    # Content kept: the clean answer is close to a reference answer, the loop is not (markers removed).
    kept = quality.content_kept([clean.text, loop.text], ["Paris is the capital of France.",
                                                          "Paris is the capital of France."])
    assert kept[0] > 0.7 > kept[1]


def test_compare_decoding_breaks_the_loop_and_keeps_the_answer(replies):
    # The same prompts with compare's repetition control (reply tokens only, end-of-turn spared): the egg
    # reply becomes steps of an answer, and the clean one is unchanged.
    (_, clean), (egg, france) = replies
    assert not quality.is_loop(egg.text), egg.text
    assert "egg" in egg.text.lower() and quality.repeated_ngram_share(egg.text) < 0.1
    assert france.text == clean.text
