"""Prices and what an event costs, in integers only. A price is per million tokens, written in the
currency's major unit with at most six decimals (`"0.15"` USD: 150,000 micro-units); it is kept as integer
micro-units. An event's cost is its uncached prompt tokens, cached prompt tokens and completion tokens
times their prices, divided by a million and rounded half up once, to an integer number of micro-units
(one millionth of the major unit). Amounts are parsed with Decimal (exact), never a float."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from services.metering.account_errors import InvalidChange

MICRO = 1_000_000
PER_TOKENS = 1_000_000
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
PRICE_FIELDS = ("prompt", "cached_prompt", "completion")
# A price per million tokens at most this many major units (a bound that keeps every product in int64).
MAX_PRICE_MAJOR = 1_000_000


@dataclass(frozen=True)
class Price:
    """Micro-units per million tokens of each kind, in force from effective_from (seconds since the epoch)."""

    price_id: str
    model_name: str
    currency: str
    effective_from: float
    prompt: int
    cached_prompt: int
    completion: int
    created_at: float = 0.0


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


def show(micro: int, currency: str) -> str:
    """An amount of micro-units in the major unit, exactly: 1234567 USD -> "1.234567 USD"."""
    sign, whole = ("-" if micro < 0 else ""), abs(micro)
    return f"{sign}{whole // MICRO}.{whole % MICRO:06d} {currency}".strip()


def event_cost(prompt_tokens: int, cached_tokens: int, completion_tokens: int, price: Price) -> int:
    """The event's cost in micro-units, rounded half up once."""
    cached = min(cached_tokens, prompt_tokens)
    exact = (prompt_tokens - cached) * price.prompt + cached * price.cached_prompt
    exact += completion_tokens * price.completion
    return (exact + PER_TOKENS // 2) // PER_TOKENS


def in_force(prices: list[Price], at: float) -> Price | None:
    """The price of one model in force at `at`: the latest that started by then (prices sorted by start)."""
    chosen = None
    for price in prices:
        if price.effective_from <= at:
            chosen = price
        else:
            break
    return chosen
