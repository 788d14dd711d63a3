"""Teacher-forced scores: perplexity of reference replies and multiple-choice option log-likelihood."""

from __future__ import annotations

import math
from typing import Any

from finetune.compare.prompts import MCQuestion, Messages
from finetune.data import end_of_turn_token, tokenize_conversation

MC_SCORING = "mean log-probability per option token (length-normalised); sum also reported as accuracy_sum"


def sequence_logprobs(
    model: Any, rows: list[dict[str, Any]], pad_id: int, batch_size: int
) -> list[tuple[float, int]]:
    """(sum of log-probabilities, number) of the labelled tokens of each tokenised row."""
    import torch

    out: list[tuple[float, int]] = []
    device = next(model.parameters()).device
    # Similar lengths together: less padding. Results go back in input order.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    scored: dict[int, tuple[float, int]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(rows[i]["input_ids"]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            n = len(rows[i]["input_ids"])
            ids[r, :n] = torch.tensor(rows[i]["input_ids"])
            labels[r, :n] = torch.tensor(rows[i]["labels"])
            mask[r, :n] = 1
        targets = labels[:, 1:]
        # Only positions that predict a labelled token need the (large) vocabulary projection.
        keep = (targets != -100).any(dim=0).nonzero().squeeze(-1)
        if keep.numel() == 0:  # nothing labelled in this batch (e.g. references truncated away)
            scored.update({i: (0.0, 0) for i in chunk})
            continue
        with torch.inference_mode():
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                logits_to_keep=keep.to(device),
                use_cache=False,
            ).logits.float()
        picked = targets[:, keep].to(device)
        logprobs = torch.log_softmax(logits, dim=-1)
        valid = picked != -100
        gathered = logprobs.gather(-1, picked.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
        for r, i in enumerate(chunk):
            scored[i] = (float(gathered[r].sum()), int(valid[r].sum()))
    for i in range(len(rows)):
        out.append(scored[i])
    return out


def reference_log_perplexities(
    model: Any,
    tokenizer: Any,
    references: list[Messages],
    max_length: int,
    batch_size: int,
) -> list[float | None]:
    """Mean negative log-likelihood per assistant token of each reference conversation (log-perplexity)."""
    terminator = end_of_turn_token(tokenizer)
    rows = [tokenize_conversation(tokenizer, ref, max_length, terminator) for ref in references]
    scores = sequence_logprobs(model, rows, tokenizer.pad_token_id, batch_size)
    return [(-total / count) if count else None for total, count in scores]


def mc_user_message(question: MCQuestion) -> str:
    """The question with its options listed (language-neutral wording, so Japanese sets read naturally)."""
    return question.question + "\n" + "\n".join(f"- {c}" for c in question.choices)


def mc_results(
    model: Any,
    tokenizer: Any,
    questions: list[MCQuestion],
    system_prompt: str | None,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Per question: the option chosen by mean and by summed log-probability, and whether each is right."""
    rows, owners = [], []
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for qi, question in enumerate(questions):
        for choice in question.choices:
            messages = [
                *head,
                {"role": "user", "content": mc_user_message(question)},
                {"role": "assistant", "content": choice},
            ]
            # No end-of-turn token in the labels: score the option's own words only.
            rows.append(tokenize_conversation(tokenizer, messages, 4096, terminator=None))
            owners.append(qi)
    scores = sequence_logprobs(model, rows, tokenizer.pad_token_id, batch_size)
    per_question: list[list[tuple[float, int]]] = [[] for _ in questions]
    for qi, score in zip(owners, scores, strict=True):
        per_question[qi].append(score)
    results = []
    for question, options in zip(questions, per_question, strict=True):
        means = [total / count if count else -math.inf for total, count in options]
        sums = [total if count else -math.inf for total, count in options]
        pred_mean = max(range(len(means)), key=means.__getitem__)
        pred_sum = max(range(len(sums)), key=sums.__getitem__)
        results.append(
            {
                "id": question.id,
                "pred": pred_mean,
                "pred_sum": pred_sum,
                "correct": float(pred_mean == question.label),
                "correct_sum": float(pred_sum == question.label),
            }
        )
    return results
