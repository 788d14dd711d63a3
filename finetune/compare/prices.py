"""Input-token prices for the break-even point, read from finetune/catalog/inference_prices.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from finetune.compare import CompareError
from finetune.compare.breakeven import local_price_per_mtok

PRICES_FILE = Path(__file__).resolve().parent.parent / "catalog" / "inference_prices.yaml"


def load_prices(path: Path = PRICES_FILE) -> dict[str, Any]:
    """The price file as a mapping with `default`, `hosted` and `local` keys."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CompareError(f"{path}: cannot read the price file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("hosted"), dict) or "local" not in data:
        raise CompareError(f"{path}: expected 'default:', a 'hosted:' mapping and a 'local:' entry")
    for name, entry in data["hosted"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("price_per_mtok"), (int, float)):
            raise CompareError(f"{path}: hosted.{name}: expected price_per_mtok, currency, as_of, source")
    local = data["local"]
    for key in ("power_w", "tokens_per_s", "price_per_kwh"):
        if not isinstance(local.get(key), (int, float)) or local[key] <= 0:
            raise CompareError(f"{path}: local.{key}: expected a positive number")
    return data


def resolve_price(
    name: str | None, per_mtok: float | None, currency: str, path: Path = PRICES_FILE
) -> dict[str, Any]:
    """The input price to use: the flag's figure, a named catalogue entry, 'local', or the default entry.

    Returns {per_mtok, currency, source}.
    """
    if per_mtok is not None:
        if per_mtok < 0:
            raise CompareError(f"--price-per-mtok {per_mtok}: expected a price of zero or more")
        return {"per_mtok": float(per_mtok), "currency": currency.upper(), "source": "--price-per-mtok"}
    data = load_prices(path)
    name = name or data.get("default")
    if name == "local":
        local = data["local"]
        price = local_price_per_mtok(local["power_w"], local["price_per_kwh"], local["tokens_per_s"])
        source = (
            f"local electricity: {local['power_w']} W at {local['price_per_kwh']} {local['currency']}/kWh, "
            f"{local['tokens_per_s']} prompt tokens/s ({path.name})"
        )
        return {"per_mtok": price, "currency": local["currency"], "source": source}
    entry = data["hosted"].get(name)
    if entry is None:
        known = ", ".join([*data["hosted"], "local"])
        raise CompareError(f"--price {name}: not in {path} (known: {known})")
    source = f"{name} input price as of {entry.get('as_of', '?')} ({entry.get('source', path.name)})"
    return {"per_mtok": float(entry["price_per_mtok"]), "currency": entry["currency"], "source": source}


def local_figures(path: Path = PRICES_FILE) -> dict[str, Any]:
    """The `local` entry: power_w, price_per_kwh and currency, for pricing a fine-tune without a cost."""
    return dict(load_prices(path)["local"])
