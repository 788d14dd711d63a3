"""Money arithmetic: currency conversion, rental and electricity costs, printing amounts (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from finetune.errors import FinetuneError


class CurrencyError(FinetuneError):
    """A currency code has no exchange rate in the rates file."""


def _rates_or_default(rates: Mapping[str, float] | None) -> Mapping[str, float]:
    """The given rates, or the catalogue's (with the user's overrides) when none are given."""
    if rates is not None:
        return rates
    from finetune.catalog import load_rates

    return load_rates()


def _rate(code: str, rates: Mapping[str, float]) -> float:
    """USD per unit of `code`, or a CurrencyError naming the currency and where rates come from."""
    try:
        return float(rates[code])
    except KeyError:
        files = getattr(rates, "files", None)
        if files:
            where = " or ".join(str(f) for f in files)
        else:
            where = "finetune/catalog/currencies.yaml"
        raise CurrencyError(
            f"unknown currency '{code}': no exchange rate in {where} "
            f"(add it under usd_per_unit in $FINETUNE_HOME/currencies.yaml)"
        ) from None


def convert(amount: float, from_cur: str, to_cur: str, rates: Mapping[str, float] | None = None) -> float:
    """Convert `amount` between currencies through their USD rates."""
    rates = _rates_or_default(rates)
    if from_cur == to_cur:
        _rate(from_cur, rates)  # still reject codes nobody knows
        return float(amount)
    return float(amount) * _rate(from_cur, rates) / _rate(to_cur, rates)


def rental_cost(seconds: float, hourly_rate: float, currency: str, num_gpus: int = 1) -> dict[str, Any]:
    """What renting `num_gpus` GPUs at `hourly_rate` each costs for `seconds`."""
    return {"amount": seconds / 3600.0 * hourly_rate * num_gpus, "currency": currency}


def estimated_energy_wh(seconds: float, power_w: float, utilisation: float) -> float:
    """Energy drawn by a device of rated `power_w` running at `utilisation` of it for `seconds`, in Wh."""
    return power_w * utilisation * seconds / 3600.0


def energy_cost(wh: float, price_per_kwh: float, currency: str) -> dict[str, Any]:
    """What `wh` watt-hours cost at `price_per_kwh`."""
    return {"amount": wh / 1000.0 * price_per_kwh, "currency": currency}


def _section(cost_section: Any) -> dict[str, Any]:
    """A recipe's `cost` section as a plain dict (accepts the pydantic model, a dict or None)."""
    if cost_section is None:
        return {}
    if hasattr(cost_section, "model_dump"):
        return cost_section.model_dump()
    return dict(cost_section)


def display_currency(cost_section: Any) -> str:
    """The currency to show: the recipe's `cost.currency`, else its price's currency, else USD."""
    section = _section(cost_section)
    if section.get("currency"):
        return section["currency"]
    for key in ("hourly_rate", "electricity"):
        if section.get(key):
            return section[key]["currency"]
    return "USD"


def run_cost(
    cost_section: Any,
    seconds: float,
    energy_wh: float | None = None,
    gpu_power_w: float | None = None,
    utilisation: float | None = None,
    to_currency: str | None = None,
    num_gpus: int = 1,
    rates: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A run's cost from the recipe's cost section: rental, measured or estimated electricity, or none."""
    section = _section(cost_section)
    target = to_currency or display_currency(section)
    rate, power = section.get("hourly_rate"), section.get("electricity")
    if rate:
        money = rental_cost(seconds, rate["amount"], rate["currency"], num_gpus)
        basis, estimated = "rental", False
    elif power and energy_wh is not None:
        money = energy_cost(energy_wh, power["price_per_kwh"], power["currency"])
        basis, estimated = "electricity-measured", False
    elif power and gpu_power_w:
        share = 1.0 if utilisation is None else utilisation
        wh = estimated_energy_wh(seconds, gpu_power_w, share) * num_gpus
        money = energy_cost(wh, power["price_per_kwh"], power["currency"])
        basis, estimated = "electricity-estimated", True
    else:
        return {"amount": None, "currency": target, "basis": "none", "estimated": False}
    amount = convert(money["amount"], money["currency"], target, rates)
    return {"amount": amount, "currency": target, "basis": basis, "estimated": estimated}


def format_money(amount: float | None, currency: str) -> str:
    """'¥1,235', '$12.34', '€5.00', '12.34 CHF'; 'n/a' when there is no amount."""
    if amount is None or (isinstance(amount, float) and math.isnan(amount)):
        return "n/a"
    from finetune.catalog import currency_style

    symbol, decimals = currency_style(currency)
    value = round(amount, decimals)
    # Tiny non-zero costs would print as $0.00, which reads as free.
    if 0 < amount < 10**-decimals:
        text = f"<{symbol or ''}{10**-decimals:.{decimals}f}" + ("" if symbol else f" {currency}")
        return text
    number = f"{value:,.{decimals}f}"
    return f"{symbol}{number}" if symbol else f"{number} {currency}"
