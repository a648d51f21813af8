"""What an event costs, in integers only, as metering records it and a gateway tells a client: prices per
million tokens in micro-units (one millionth of the currency's major unit), an event's uncached prompt,
cached prompt and completion tokens times their prices, divided by a million and rounded half up once;
plus its images and embedding inputs times their prices per unit (whole micro-units: nothing to round)."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.metering.v1 import metering_pb2 as pb

MICRO = 1_000_000
PER_TOKENS = 1_000_000


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
    # Micro-units per image in a prompt and per embedding input.
    image: int = 0
    embedding_input: int = 0


def show(micro: int, currency: str) -> str:
    """An amount of micro-units in the major unit, exactly: 1234567 USD -> "1.234567 USD"."""
    sign, whole = ("-" if micro < 0 else ""), abs(micro)
    return f"{sign}{whole // MICRO}.{whole % MICRO:06d} {currency}".strip()


def event_cost(
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    price: Price,
    images: int = 0,
    embedding_inputs: int = 0,
) -> int:
    """The event's cost in micro-units, its tokens' share rounded half up once."""
    cached = min(cached_tokens, prompt_tokens)
    exact = (prompt_tokens - cached) * price.prompt + cached * price.cached_prompt
    exact += completion_tokens * price.completion
    return (exact + PER_TOKENS // 2) // PER_TOKENS + images * price.image + embedding_inputs * price.embedding_input


def in_force(prices: list[Price], at: float) -> Price | None:
    """The price of one model in force at `at`: the latest that started by then (prices sorted by start)."""
    chosen = None
    for price in prices:
        if price.effective_from <= at:
            chosen = price
        else:
            break
    return chosen


def from_message(message: pb.Price) -> Price:
    start = message.effective_from
    return Price(
        message.price_id,
        message.model_name,
        message.currency,
        start.seconds + start.nanos / 1e9,
        message.prompt_micro,
        message.cached_prompt_micro,
        message.completion_micro,
        image=message.image_micro,
        embedding_input=message.embedding_input_micro,
    )
