"""Repetition control for compare's decoding: penalise tokens the reply already used, never end-of-turn.

transformers' `repetition_penalty` also penalises every token of the prompt (which differs between arms: the
persona prompt's own words would be penalised only in the prompt arms), and the chat template puts the
end-of-turn token after each message, so it makes replies less likely to end (measured: the share of demo
prompt-arm replies ending at end-of-turn fell from 25% to 13%). This processor looks only at the reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# Measured on the demo's 24 held-out prompts, greedy, 64 new tokens, bf16, bundled model with the pirate
# system prompt (2026-12-02, machine busy), loops / ended at end-of-turn / content kept vs reference:
# plain greedy 11 / 6 / 0.34; this penalty at 1.1: 3 / 10 / 0.36; at 1.2: 0 / 16 / 0.44, marker rate
# unchanged (0.54) and the base arm's content kept at 0.48 with plain greedy. docs/compare.md.
DEFAULT_REPETITION_PENALTY = 1.2


class ReplyRepetitionPenalty:
    """A logits processor: divide (or, for negative logits, multiply) the logit of every token already in
    the reply by `penalty`, as transformers' RepetitionPenaltyLogitsProcessor does, but over the generated
    tokens only and never for the stop tokens. One instance per batch: the first call fixes the prompt width.
    """

    def __init__(self, penalty: float, spare_ids: Iterable[int]) -> None:
        self.penalty = penalty
        self.spare = sorted(set(spare_ids))
        self.prompt_width: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Return the penalised scores for the next token."""
        if self.prompt_width is None:
            self.prompt_width = int(input_ids.shape[1])
        reply = input_ids[:, self.prompt_width :]
        if reply.shape[1] == 0 or self.penalty == 1.0:
            return scores
        picked = scores.gather(1, reply)
        penalised = picked.where(picked < 0, picked / self.penalty)
        penalised = penalised.where(picked >= 0, picked * self.penalty)
        out = scores.scatter(1, reply, penalised)
        if self.spare:
            out[:, self.spare] = scores[:, self.spare]  # end-of-turn is always free to come
        return out


def processors(penalty: float, spare_ids: Iterable[int]) -> Callable[[], list[Any]] | None:
    """A factory of fresh per-batch logits processors for `finetune.inference.generate` (None: no penalty)."""
    if penalty == 1.0:
        return None
    spare = list(spare_ids)

    def make() -> list[Any]:
        from transformers import LogitsProcessorList

        return LogitsProcessorList([ReplyRepetitionPenalty(penalty, spare)])

    return make
