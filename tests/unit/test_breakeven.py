"""Break-even arithmetic and input prices for compare (pure functions and the shipped price file)."""

from __future__ import annotations

import pytest

from finetune.compare import breakeven
from finetune.compare.prices import load_prices, resolve_price
from finetune.errors import FinetuneError


def test_breaks_even_after_the_smallest_sufficient_number_of_requests():
    # 100 extra tokens at $0.15 per million = $0.000015 per request; a $1 fine-tune needs 66,667 of them.
    result = breakeven.break_even(1.0, 100, 0.15)
    assert result["status"] == breakeven.BREAKS_EVEN
    assert result["saving_per_request"] == pytest.approx(1.5e-5)
    assert result["requests"] == 66_667
    assert result["requests"] * result["saving_per_request"] >= 1.0
    assert (result["requests"] - 1) * result["saving_per_request"] < 1.0


def test_an_exact_multiple_is_not_pushed_one_request_too_far_by_rounding():
    # 0.0003 / 0.000015 is 20 in exact arithmetic but not in floating point.
    assert breakeven.break_even(0.0003, 100, 0.15)["requests"] == 20
    assert breakeven.break_even(0.1, 1_000_000, 0.1)["requests"] == 1


def test_never_breaks_even_when_the_prompt_costs_nothing_extra():
    for extra, price in ((0, 0.15), (-3, 0.15), (120, 0.0)):
        result = breakeven.break_even(2.5, extra, price)
        assert result["status"] == breakeven.NEVER and result["requests"] is None


def test_a_free_fine_tune_is_already_cheaper():
    result = breakeven.break_even(0.0, 50, 0.15)
    assert result == {
        "status": breakeven.ALREADY_CHEAPER,
        "requests": 0,
        "saving_per_request": pytest.approx(7.5e-6),
    }
    assert breakeven.break_even(0.0, 0, 0.15)["status"] == breakeven.ALREADY_CHEAPER


def test_negative_costs_are_rejected():
    with pytest.raises(ValueError):
        breakeven.break_even(-1.0, 10, 0.1)
    with pytest.raises(ValueError):
        breakeven.break_even(1.0, 10, -0.1)


def test_local_electricity_prices():
    # 300 W reading 5,000 tokens/s: a million tokens take 200 s = 1/60 kWh x 0.30 = 0.005 per million.
    assert breakeven.local_price_per_mtok(300, 0.30, 5000) == pytest.approx(0.005)
    assert breakeven.local_energy_cost(3600, 1000, 0.3) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        breakeven.local_price_per_mtok(300, 0.3, 0)


def test_describe_each_case():
    text = breakeven.describe(breakeven.break_even(1.0, 100, 0.15), "adapter", "$1.00", "$0.15/M", 100)
    assert text == (
        "adapter: breaks even after 66,667 requests (fine-tune $1.00; the system prompt adds 100 input "
        "tokens per request at $0.15/M)"
    )
    text = breakeven.describe(breakeven.break_even(1.0, 0, 0.15), "adapter", "$1.00", "$0.15/M", 0)
    assert text == "adapter: never breaks even: the system prompt adds no input tokens per request, nothing to save"
    # A persona prompt shorter than the template's default system text: it said "adds -8 input tokens".
    text = breakeven.describe(breakeven.break_even(1.0, -8, 0.15), "adapter", "$1.00", "$0.15/M", -8)
    assert text == ("adapter: never breaks even: with the system prompt a request has 8 fewer input tokens (the "
                    "persona prompt is shorter than the chat template's default system text), so the prompt costs "
                    "nothing to replace")
    text = breakeven.describe(breakeven.break_even(1.0, 50, 0.0), "adapter", "$1.00", "$0.00/M", 50)
    assert text == ("adapter: never breaks even: the system prompt adds 50 input tokens per request, which cost "
                    "nothing at $0.00/M")
    text = breakeven.describe(breakeven.break_even(0.0, 40, 0.15), "adapter", "$0.00", "$0.15/M", 40)
    assert (
        text == "adapter: the fine-tune cost nothing ($0.00), so it is cheaper than the prompt from request 1"
    )


def test_price_resolution_from_flag_catalogue_and_local(tmp_path):
    assert resolve_price(None, 0.5, "jpy") == {
        "per_mtok": 0.5,
        "currency": "JPY",
        "source": "--price-per-mtok",
    }
    data = load_prices()
    default = resolve_price(None, None, "USD")
    entry = data["hosted"][data["default"]]
    assert default["per_mtok"] == entry["price_per_mtok"] and default["currency"] == entry["currency"]
    assert entry["as_of"] in default["source"]
    local = resolve_price("local", None, "USD")
    expected = breakeven.local_price_per_mtok(
        data["local"]["power_w"], data["local"]["price_per_kwh"], data["local"]["tokens_per_s"]
    )
    assert local["per_mtok"] == pytest.approx(expected) and local["currency"] == data["local"]["currency"]
    with pytest.raises(FinetuneError, match="not in"):
        resolve_price("no-such-model", None, "USD")
    with pytest.raises(FinetuneError, match="zero or more"):
        resolve_price(None, -1.0, "USD")
    broken = tmp_path / "prices.yaml"
    broken.write_text("default: x\nhosted: {}\nlocal: {power_w: 0, tokens_per_s: 1, price_per_kwh: 1}\n")
    with pytest.raises(FinetuneError, match="local.power_w"):
        load_prices(broken)
