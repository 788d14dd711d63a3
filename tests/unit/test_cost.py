"""Money arithmetic: conversion, rental and electricity costs, run costs by basis, printing amounts."""

from __future__ import annotations

import pytest

from finetune.catalog import Rates, load_rates
from finetune.cost import (
    CurrencyError,
    convert,
    display_currency,
    energy_cost,
    estimated_energy_wh,
    format_money,
    rental_cost,
    run_cost,
)
from finetune.errors import FinetuneError
from finetune.recipe import CostConfig

RATES = {"USD": 1.0, "JPY": 0.005, "EUR": 1.25}


def test_convert_goes_through_usd():
    assert convert(100, "USD", "JPY", RATES) == pytest.approx(20000)
    assert convert(20000, "JPY", "USD", RATES) == pytest.approx(100)
    assert convert(10, "EUR", "JPY", RATES) == pytest.approx(2500)
    assert convert(7, "JPY", "JPY", RATES) == 7


def test_convert_round_trip_is_identity():
    assert convert(convert(123.45, "EUR", "JPY", RATES), "JPY", "EUR", RATES) == pytest.approx(123.45)


def test_unknown_currency_names_the_currency_and_the_rates_file(tmp_path):
    rates = Rates({"USD": 1.0}, [tmp_path / "currencies.yaml"])
    with pytest.raises(CurrencyError) as info:
        convert(1, "XYZ", "USD", rates)
    message = str(info.value)
    assert "XYZ" in message and str(tmp_path / "currencies.yaml") in message
    assert isinstance(info.value, FinetuneError)
    with pytest.raises(CurrencyError, match="ABC"):
        convert(1, "USD", "ABC", RATES)
    with pytest.raises(CurrencyError, match="QQQ"):
        convert(1, "QQQ", "QQQ", RATES)  # same code still has to exist


def test_shipped_rates_cover_the_three_display_currencies():
    rates = load_rates()
    assert {"USD", "JPY", "EUR"} <= set(rates)
    # Sanity: a dollar buys between 80 and 250 yen, a euro between 0.8 and 1.6 dollars.
    assert 80 < convert(1, "USD", "JPY", rates) < 250
    assert 0.8 < convert(1, "EUR", "USD", rates) < 1.6
    assert rates.files and rates.as_of


def test_user_rates_override_the_shipped_ones(tmp_path, monkeypatch):
    (tmp_path / "currencies.yaml").write_text("usd_per_unit: {JPY: 0.01, XAU: 3000.0}\n")
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path))
    rates = load_rates()
    assert rates["JPY"] == 0.01 and rates["XAU"] == 3000.0 and rates["EUR"] > 0
    assert convert(1, "USD", "JPY", rates) == pytest.approx(100)


def test_rental_cost_scales_with_time_and_gpus():
    assert rental_cost(3600, 2.5, "USD") == {"amount": pytest.approx(2.5), "currency": "USD"}
    assert rental_cost(1800, 2.0, "EUR", num_gpus=4)["amount"] == pytest.approx(4.0)
    assert rental_cost(0, 2.0, "USD")["amount"] == 0


def test_energy_arithmetic():
    # 450 W at 80% for 2 hours = 720 Wh; at 31 JPY/kWh that is 22.32 JPY.
    wh = estimated_energy_wh(7200, 450, 0.8)
    assert wh == pytest.approx(720)
    assert energy_cost(wh, 31, "JPY") == {"amount": pytest.approx(22.32), "currency": "JPY"}


def test_run_cost_rental_converts_to_display_currency():
    section = CostConfig(hourly_rate={"amount": 0.5, "currency": "USD"}, currency="JPY")
    result = run_cost(section, 7200, rates=RATES)
    assert result == {"amount": pytest.approx(200.0), "currency": "JPY", "basis": "rental",
                      "estimated": False}


def test_run_cost_rental_counts_every_gpu():
    section = {"hourly_rate": {"amount": 1.0, "currency": "USD"}}
    assert run_cost(section, 3600, num_gpus=2, rates=RATES)["amount"] == pytest.approx(2.0)


def test_run_cost_prefers_measured_energy_over_the_estimate():
    section = CostConfig(electricity={"price_per_kwh": 30, "currency": "JPY"})
    measured = run_cost(section, 3600, energy_wh=500, gpu_power_w=450, utilisation=0.9, rates=RATES)
    assert measured == {"amount": pytest.approx(15.0), "currency": "JPY", "basis": "electricity-measured",
                        "estimated": False}
    guessed = run_cost(section, 3600, energy_wh=None, gpu_power_w=400, utilisation=0.5, rates=RATES)
    assert guessed["basis"] == "electricity-estimated" and guessed["estimated"] is True
    assert guessed["amount"] == pytest.approx(6.0)  # 200 Wh x 30 JPY/kWh


def test_run_cost_without_a_price_is_none():
    result = run_cost(CostConfig(), 3600, rates=RATES)
    assert result == {"amount": None, "currency": "USD", "basis": "none", "estimated": False}
    no_power = run_cost({"electricity": {"price_per_kwh": 30, "currency": "JPY"}}, 3600, rates=RATES)
    assert no_power["basis"] == "none"  # electricity price but neither energy nor power to price


def test_display_currency_order():
    assert display_currency(CostConfig(currency="EUR", hourly_rate={"amount": 1, "currency": "USD"})) == "EUR"
    assert display_currency(CostConfig(electricity={"price_per_kwh": 30, "currency": "JPY"})) == "JPY"
    assert display_currency(CostConfig()) == "USD"
    assert display_currency(None) == "USD"


def test_run_cost_rejects_an_unknown_price_currency():
    with pytest.raises(CurrencyError, match="SEK"):
        run_cost({"hourly_rate": {"amount": 1, "currency": "SEK"}}, 3600, rates=RATES)


def test_format_money():
    assert format_money(1234.5, "JPY") == "¥1,234" or format_money(1234.5, "JPY") == "¥1,235"
    assert format_money(1234.6, "JPY") == "¥1,235"
    assert format_money(12.345, "USD") == "$12.35" or format_money(12.345, "USD") == "$12.34"
    assert format_money(5, "EUR") == "€5.00"
    assert format_money(1_000_000, "USD") == "$1,000,000.00"
    assert format_money(12.5, "CHF") == "12.50 CHF"
    assert format_money(None, "USD") == "n/a"
    assert format_money(0.001, "USD") == "<$0.01"
    assert format_money(0.2, "JPY") == "<¥1"
    assert format_money(0, "JPY") == "¥0"
