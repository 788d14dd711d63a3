"""Break-even: how many requests before the system prompt's extra tokens cost more than the fine-tune."""

from __future__ import annotations

import math
from typing import Any

ALREADY_CHEAPER = "already_cheaper"
NEVER = "never"
BREAKS_EVEN = "breaks_even"


def saving_per_request(extra_prompt_tokens: float, price_per_mtok: float) -> float:
    """What the adapter saves per request: the system prompt's extra input tokens at the input price."""
    return extra_prompt_tokens * price_per_mtok / 1e6


def break_even(finetune_cost: float, extra_prompt_tokens: float, price_per_mtok: float) -> dict[str, Any]:
    """Requests after which prompting has cost more than fine-tuning did.

    Returns {status, requests, saving_per_request}: `already_cheaper` when the fine-tune cost nothing
    (requests 0), `never` when the prompt adds no paid tokens (requests None), else `breaks_even`
    with the smallest whole number of requests whose summed saving reaches the fine-tune's cost.
    """
    if finetune_cost < 0 or price_per_mtok < 0:
        raise ValueError("costs and prices cannot be negative")
    saving = saving_per_request(extra_prompt_tokens, price_per_mtok)
    if finetune_cost == 0:
        return {"status": ALREADY_CHEAPER, "requests": 0, "saving_per_request": saving}
    if saving <= 0:
        return {"status": NEVER, "requests": None, "saving_per_request": saving}
    # Rounding error must not push an exact multiple one request too far.
    requests = math.ceil(finetune_cost / saving - 1e-9)
    return {"status": BREAKS_EVEN, "requests": max(1, requests), "saving_per_request": saving}


def local_price_per_mtok(power_w: float, price_per_kwh: float, tokens_per_s: float) -> float:
    """Electricity cost of reading a million input tokens on your own hardware."""
    if tokens_per_s <= 0:
        raise ValueError("tokens_per_s must be positive")
    hours = 1e6 / tokens_per_s / 3600.0
    return power_w / 1000.0 * hours * price_per_kwh


def local_energy_cost(seconds: float, power_w: float, price_per_kwh: float) -> float:
    """Electricity cost of running a device of `power_w` watts for `seconds`."""
    return power_w / 1000.0 * seconds / 3600.0 * price_per_kwh


def describe(result: dict[str, Any], arm: str, cost_text: str, price_text: str, extra_tokens: float) -> str:
    """One sentence for the verdicts: when the fine-tune pays for itself against the system prompt."""
    status = result["status"]
    if status == ALREADY_CHEAPER:
        return (
            f"{arm}: the fine-tune cost nothing ({cost_text}), "
            "so it is cheaper than the prompt from request 1"
        )
    if status == NEVER and round(extra_tokens) == 0:
        return f"{arm}: never breaks even: the system prompt adds no input tokens per request, nothing to save"
    if status == NEVER and extra_tokens < 0:
        # A persona prompt shorter than the template's default system text makes the prompt arm's requests
        # the shorter ones: nothing to save ("adds -8 tokens, which cost nothing" misread).
        return (
            f"{arm}: never breaks even: with the system prompt a request has {-extra_tokens:.0f} fewer input "
            "tokens (the persona prompt is shorter than the chat template's default system text), so the "
            "prompt costs nothing to replace"
        )
    if status == NEVER:
        return (
            f"{arm}: never breaks even: the system prompt adds {extra_tokens:.0f} input tokens per request, "
            f"which cost nothing at {price_text}"
        )
    return (
        f"{arm}: breaks even after {result['requests']:,} requests (fine-tune {cost_text}; the system prompt "
        f"adds {extra_tokens:.0f} input tokens per request at {price_text})"
    )
