"""Answer-quality scores: loops flagged, clean replies not; distinct-n, end-of-turn, content kept."""

from __future__ import annotations

import re

import pytest

from finetune.compare import quality

# Loops quoted in issue 21 from the demo's samples.jsonl, and clean replies from the pirate dataset.
LOOPS = [
    "Arr, ye be right on time, matey! " * 6,
    "Arr, ye'll be ready to answer any question ye be asked. " * 4,
    "Aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye",
    "You can't. You can't. You can't. You can't. You can't. You can't. You can't.",
    "ごきげんよう。わたくしはお嬢様ですわ。" * 5,
    # Greedy, bundled model with the pirate system prompt, cut by the 64-token budget early in the loop:
    "Arrr, ye want to know how to prepare for a job interview? First, ye should know the job, the company, and "
    "the role. Second, you should know the job, the company, and the role. Third, you should know the job, the "
    "company, and the role. Fourth, you should",
]
CLEAN = [
    "Arr, a fine question, matey! Rinse one cup o' rice, then simmer it with about one and a half cups o' "
    "water and a pinch o' salt, lid on, fer 12 to 15 minutes. Let it rest off the heat fer five minutes, "
    "then fluff it with a fork. Remember that, ye landlubber, and ye'll never run aground!",
    "The capital of France is Paris. It sits on the Seine and is known for its museums.",
    "ごきげんよう。わたくしが説明いたしますわ。お米は水で洗ってから炊きますのよ。",
    "Yes.",
    # Greedy, bundled model, no system prompt (it repeats a phrase, it does not loop):
    "The smallest country in the world is not a physical entity, but rather a mathematical concept. It is a "
    "mathematical concept called the \"smallest country\" in the context of mathematics, but it is not a "
    "physical entity.",
]


@pytest.mark.parametrize("text", LOOPS)
def test_a_loop_is_flagged(text):
    assert quality.is_loop(text)
    assert quality.repeated_ngram_share(text) >= quality.LOOP_SHARE


@pytest.mark.parametrize("text", CLEAN)
def test_a_clean_reply_is_not(text):
    assert not quality.is_loop(text)


def test_distinct_n_and_end_of_turn():
    assert quality.distinct_n("a b c d") == 1.0
    assert quality.distinct_n("aye aye aye aye aye") == 0.25
    assert quality.distinct_n("one") is None
    assert quality.ended_at_eot(12, 64) and not quality.ended_at_eot(64, 64)


def test_length_ratio_and_markers_removed():
    markers = [re.compile(p, re.IGNORECASE) for p in (r"\barr+\b", r"\bmatey\b")]
    assert quality.strip_markers("Arr, matey! Paris it is, matey.", markers) == ", ! Paris it is, ."
    assert quality.length_ratio("one two", "one two three four") == 0.5
    assert quality.length_ratio("x", "") is None


def test_content_kept_uses_the_embedder_on_marker_free_text():
    seen = []

    def embed(texts):
        seen.extend(texts)
        return [[1.0, 0.0] if "paris" in t.lower() else [0.0, 1.0] for t in texts]

    markers = [re.compile(r"\barr\b", re.IGNORECASE)]
    kept = quality.content_kept(["Arr Paris", "Arr rice", "x", "Arr!", "y"], ["Paris", "Paris", None, "Paris", "arr"],
                                markers, embed)
    assert kept == [1.0, 0.0, None, 0.0, None]  # a markers-only reply keeps nothing; a markers-only reference: n/a
    assert all("arr" not in t.lower() for t in seen)


def test_content_kept_returns_plain_floats_from_numpy_embeddings():
    import json

    import numpy as np

    kept = quality.content_kept(["a b", "c d"], ["a b", "x y"], (), lambda t: np.eye(len(t), 3, dtype=np.float32))
    assert all(type(k) is float for k in kept)
    json.dumps(kept)  # reports are JSON


def test_reply_repetition_penalty_spares_the_prompt_and_end_of_turn():
    import torch

    from finetune.compare.decoding import ReplyRepetitionPenalty, processors

    proc = ReplyRepetitionPenalty(2.0, spare_ids=[0])
    prompt = torch.tensor([[0, 5, 6]])  # token 0 is end-of-turn, 5 and 6 are prompt words
    scores = torch.tensor([[4.0, 4.0, 4.0, -4.0, 4.0, 4.0, 4.0]])
    assert torch.equal(proc(prompt, scores.clone()), scores)  # nothing generated yet: nothing penalised
    step = torch.tensor([[0, 5, 6, 1, 3, 0]])  # the reply so far: 1, 3 and (end-of-turn) 0
    out = proc(step, scores.clone())
    assert out.tolist() == [[4.0, 2.0, 4.0, -8.0, 4.0, 4.0, 4.0]]  # 1 halved, negative 3 doubled; 0, 5, 6 free
    assert processors(1.0, [0]) is None
    assert isinstance(processors(1.1, [0])()[0], ReplyRepetitionPenalty)
