"""Amounts as providers write them and minor units as payhooks counts them."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from shared.money import exponent, to_decimal_string, to_minor


@pytest.mark.parametrize(("amount", "currency", "minor"), [
    ("129.50", "EUR", 12950), ("129.5", "eur", 12950), (129.5, "EUR", 12950),
    ("0", "EUR", 0), (3, "EUR", 300), ("1000", "JPY", 1000), ("1.234", "KWD", 1234),
    (Decimal("33.61"), None, 3361), ("9.99", "XYZ", 999),  # unknown currencies: two places
])
def test_amounts_become_minor_units(amount: str | int | float | Decimal, currency: str | None,
                                    minor: int) -> None:
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize(("amount", "currency"), [
    ("12.345", "EUR"), ("1.5", "JPY"), ("-1.00", "EUR"), ("NaN", "EUR"), ("Infinity", "EUR"),
    ("", "EUR"), ("12,50", "EUR"), ("abc", None), ("1e19", "EUR"), ("1" * 20, "JPY"),
    ("1e400000", "EUR"),  # took 4 s of CPU to scale, then failed to be written
])
def test_what_is_not_an_exact_amount_is_refused(amount: str, currency: str | None) -> None:
    started = time.perf_counter()
    with pytest.raises(ValueError, match="amount"):
        to_minor(amount, currency)
    assert time.perf_counter() - started < 1.0


def test_the_largest_amounts_still_read() -> None:
    assert to_minor("999999999999999999", "JPY") == 999_999_999_999_999_999
    assert to_minor("1e18", "EUR") == 10 ** 20


@pytest.mark.parametrize(("minor", "currency", "text"), [
    (12950, "EUR", "129.50"), (5, "EUR", "0.05"), (0, "EUR", "0.00"), (1000, "JPY", "1000"),
    (1234, "KWD", "1.234"), (1, None, "0.01"),
])
def test_minor_units_are_written_with_the_currencys_places(minor: int, currency: str | None,
                                                           text: str) -> None:
    assert to_decimal_string(minor, currency) == text
    assert to_minor(text, currency) == minor  # and read back the same


def test_the_exponent_follows_iso_4217() -> None:
    assert (exponent("EUR"), exponent("NOK"), exponent("jpy"), exponent("BHD")) == (2, 2, 0, 3)
    assert exponent(None) == exponent("") == 2
