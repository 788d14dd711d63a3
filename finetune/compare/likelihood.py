"""Teacher-forced scores: perplexity of reference replies and multiple-choice option log-likelihood."""

from __future__ import annotations

import math
from typing import Any

from finetune.compare.prompts import MCQuestion, Messages
from finetune.data import end_of_turn_token, render_chat, tokenize_conversation

# Every arm's reply is scored from one opening, the bullet the options are listed with, and each option follows
# it after a space. Scored as the reply's very first words, an option competed with the arm's own way of opening
# a reply ("Arr, matey..."): the demo's pirate adapter scored 0.25 after 15 steps and 0.14 after 39 (base 0.33,
# five options) while its generated answers named the right option as often as the base's and a wrong one less
# often (18 right, 2 wrong of 64 against 18 and 13), and compare reported "ability lost". From this opening the
# same adapters scored 0.36 and 0.41, the base 0.34 (docs/compare.md).
MC_LEAD = "-"
MC_SCORING = (f"mean log-probability per option token (length-normalised), each option after the reply's opening "
              f"{MC_LEAD!r}; sum also reported as accuracy_sum")


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


def split_options(
    tokenizer: Any, prefix: str, choices: list[str]
) -> tuple[list[int], list[list[int]]] | None:
    """Token ids of the prefix and of each choice as its continuation, or None when they would merge."""
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    options = []
    for choice in choices:
        full = tokenizer(prefix + choice, add_special_tokens=False)["input_ids"]
        if full[: len(prefix_ids)] != prefix_ids or len(full) == len(prefix_ids):
            return None
        options.append(full[len(prefix_ids) :])
    return prefix_ids, options


def common_length(sequences: list[list[int]]) -> int:
    """Length of the token prefix every sequence shares (at most each one's length minus one)."""
    if not sequences:
        return 0
    limit = min(len(s) for s in sequences) - 1
    length = 0
    while length < limit and all(s[length] == sequences[0][length] for s in sequences):
        length += 1
    return length


def option_logprobs(
    model: Any,
    batch: list[tuple[list[int], list[list[int]]]],
    pad_id: int,
    head: Any = None,
    head_len: int = 0,
) -> list[list[tuple[float, int]]]:
    """(summed log-probability, tokens) of every option of a batch of questions, continuing each prompt.

    Each question's prompt runs through the model once (after `head`, the KV cache of the first
    `head_len` tokens that every prompt shares); its cache is then gathered once per option, so a
    question costs its own prompt plus a few option tokens, not one full sequence per option.
    Prompts and options are right-padded; positions and masks skip the padding.
    """
    import copy

    import torch

    device = next(model.parameters()).device
    lengths = [len(prefix) - head_len for prefix, _ in batch]
    width = max(lengths)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), head_len + width), dtype=torch.long)
    mask[:, :head_len] = 1
    for i, (prefix, _) in enumerate(batch):
        ids[i, : lengths[i]] = torch.tensor(prefix[head_len:])
        mask[i, head_len : head_len + lengths[i]] = 1
    owners = [i for i, (_, options) in enumerate(batch) for _ in options]
    flat = [option for _, options in batch for option in options]
    option_width = max(len(o) for o in flat)
    option_ids = torch.full((len(flat), option_width), pad_id, dtype=torch.long)
    option_mask = torch.zeros((len(flat), option_width), dtype=torch.long)
    positions = torch.zeros((len(flat), option_width), dtype=torch.long)
    for row, (q, option) in enumerate(zip(owners, flat, strict=True)):
        option_ids[row, : len(option)] = torch.tensor(option)
        option_mask[row, : len(option)] = 1
        positions[row] = head_len + lengths[q] + torch.arange(option_width)
    last = torch.tensor([n - 1 for n in lengths])
    keep = torch.unique(last)
    with torch.inference_mode():
        cache = None
        if head is not None:
            cache = copy.deepcopy(head)
            cache.batch_repeat_interleave(len(batch))
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            cache=cache,
            use_cache=True,
            logits_to_keep=keep.to(device),
        )
        # The logits at each prompt's last real token predict its options' first tokens.
        first = torch.log_softmax(
            out.logits[torch.arange(len(batch)), torch.searchsorted(keep, last)].float(), -1
        )
        cache = out.cache
        cache.batch_select_indices(torch.tensor(owners, device=device))
        rest = model(
            input_ids=option_ids.to(device),
            attention_mask=torch.cat([mask[owners], option_mask], dim=1).to(device),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=True,
        )
        logprobs = torch.log_softmax(rest.logits.float(), dim=-1)
    scores: list[list[tuple[float, int]]] = [[] for _ in batch]
    for row, (q, option) in enumerate(zip(owners, flat, strict=True)):
        total = float(first[q, option[0]])
        for j in range(1, len(option)):
            total += float(logprobs[row, j - 1, option[j]])
        scores[q].append((total, len(option)))
    return scores


def mc_prompts(
    tokenizer: Any, questions: list[MCQuestion], system_prompt: str | None
) -> tuple[list[Messages], list[tuple[list[int], list[list[int]]] | None], int]:
    """Each question's messages, its prompt and options as token ids (`split_options`; None where they merge),
    and the length of the head every split prompt shares (template and system prompt: scored once).

    The prompt ends with the assistant's reply opened by MC_LEAD; each option is its continuation after a space.
    """
    head_messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompts = [[*head_messages, {"role": "user", "content": mc_user_message(q)}] for q in questions]
    split = [
        split_options(
            tokenizer,
            render_chat(tokenizer, m, add_generation_prompt=True) + MC_LEAD,
            [f" {choice}" for choice in q.choices],
        )
        for q, m in zip(questions, prompts, strict=True)
    ]
    return prompts, split, common_length([s[0] for s in split if s is not None])


def mc_fallback_rows(tokenizer: Any, messages: Messages, question: MCQuestion) -> list[dict[str, Any]]:
    """One tokenised row per option, for a question whose options merge with its prompt: scored whole.

    No end-of-turn token in the labels: the opening and the option's words are scored (the opening's tokens
    count in the mean here, unlike on the split path).
    """
    return [
        tokenize_conversation(tokenizer, [*messages, {"role": "assistant", "content": f"{MC_LEAD} {choice}"}], 4096,
                              terminator=None)
        for choice in question.choices
    ]


def mc_results(
    model: Any,
    tokenizer: Any,
    questions: list[MCQuestion],
    system_prompt: str | None,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Per question: the option chosen by mean and by summed log-probability, and whether each is right."""
    import torch

    prompts, split, head_len = mc_prompts(tokenizer, questions, system_prompt)
    head = None
    if head_len:
        first_ids = next(s[0] for s in split if s is not None)
        with torch.inference_mode():
            device = next(model.parameters()).device
            head = model(
                input_ids=torch.tensor([first_ids[:head_len]], device=device),
                use_cache=True,
                logits_to_keep=1,
            ).cache
    per_question: list[list[tuple[float, int]]] = [[] for _ in questions]
    fallback_rows, fallback_owner = [], []
    ready = [i for i, parts in enumerate(split) if parts is not None]
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        scored = option_logprobs(model, [split[i] for i in chunk], tokenizer.pad_token_id, head, head_len)
        for i, options in zip(chunk, scored, strict=True):
            per_question[i] = options
    for qi, (question, messages, parts) in enumerate(zip(questions, prompts, split, strict=True)):
        if parts is not None:
            continue
        rows = mc_fallback_rows(tokenizer, messages, question)  # its options merge with the prompt
        fallback_rows.extend(rows)
        fallback_owner.extend([qi] * len(rows))
    if fallback_rows:
        scored = sequence_logprobs(model, fallback_rows, tokenizer.pad_token_id, batch_size)
        for qi, score in zip(fallback_owner, scored, strict=True):
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
