"""Repetition control for compare's decoding: penalise tokens the reply already used, never end-of-turn.

transformers' `repetition_penalty` also penalises every token of the prompt, and the chat template puts the
end-of-turn token after each message, so it makes replies less likely to end (measured: the share of demo
prompt-arm replies ending at end-of-turn fell from 25% to 13%). This processor looks only at the reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# Measured on the demo's 24 held-out prompts, greedy, 64 new tokens, bundled model with the pirate system
# prompt (2026-12-02, machine busy): transformers' penalty 1.1 cut looping replies from 11 to 2 of 24 and
# raised content kept vs the reference from 0.34 to 0.47 (the base arm's: 0.48). docs/compare.md.
DEFAULT_REPETITION_PENALTY = 1.1


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
