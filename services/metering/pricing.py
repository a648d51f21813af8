"""Prices as a user writes them: per million tokens, in the currency's major unit with at most six
decimals (`"0.15"` USD: 150,000 micro-units), kept as integer micro-units; parsed with Decimal (exact),
never a float. What an event costs is services.contracts.pricing (a gateway computes it too)."""

from __future__ import annotations

import secrets
from decimal import Decimal, InvalidOperation

from services.contracts.pricing import MICRO
from services.metering.account_errors import InvalidChange

# ISO 4217 codes and their minor unit's exponent (for showing amounts); a price book has one currency.
CURRENCIES = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "CNY": 2,
    "INR": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "JPY": 0,
    "KRW": 0,
}
# A price per million tokens at most this many major units (a bound that keeps every product in int64).
MAX_PRICE_MAJOR = 1_000_000


def new_price_id() -> str:
    return "price_" + secrets.token_hex(8)


def micro_amount(text: object, field: str) -> int:
    """Micro-units from a decimal amount in the major unit ("0.15", "3", 2); InvalidChange naming the
    field when it is not a number, negative, too large or finer than a micro-unit."""
    if isinstance(text, float) or isinstance(text, bool):
        raise InvalidChange(f'{field}: write amounts as strings or integers ("0.15"), never as floats')
    try:
        amount = Decimal(str(text).strip())
    except InvalidOperation:
        raise InvalidChange(f"{field}: {text!r} is not a decimal amount") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidChange(f"{field}: must be a non-negative amount, not {text!r}")
    if amount > MAX_PRICE_MAJOR:
        raise InvalidChange(f"{field}: at most {MAX_PRICE_MAJOR} per million tokens")
    micro = amount * MICRO
    if micro != micro.to_integral_value():
        raise InvalidChange(f"{field}: {text!r} is finer than a micro-unit (at most six decimals)")
    return int(micro)
