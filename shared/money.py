"""Amounts: decimal strings as providers write them, minor units as we count them."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# ISO 4217 currencies whose minor unit is not two digits; every other has two.
_EXPONENTS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF",
                     "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}


MAX_DIGITS = 18  # digits before the point: no payment is worth 10^19 of a currency's unit


def exponent(currency: str | None) -> int:
    return _EXPONENTS.get((currency or "").upper(), 2)


def to_minor(amount: str | int | float | Decimal, currency: str | None) -> int:
    """`"129.50"` EUR -> 12950. ValueError for anything that is not an exact amount."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValueError(f"not an amount: {amount!r}") from None
    if value.is_finite() and value.adjusted() > MAX_DIGITS:
        # "1e400000" would cost seconds of CPU to scale and write, for each try of the job
        raise ValueError(f"not an amount: over {MAX_DIGITS} digits: {str(amount)[:20]!r}")
    minor = value.scaleb(exponent(currency))
    if not value.is_finite() or minor != minor.to_integral_value() or value < 0:
        raise ValueError(f"not an exact amount in {currency}: {amount!r}")
    return int(minor)


def to_decimal_string(minor: int, currency: str | None) -> str:
    """12950 EUR -> `"129.50"`."""
    places = exponent(currency)
    return str(Decimal(minor).scaleb(-places).quantize(Decimal(1).scaleb(-places)))
