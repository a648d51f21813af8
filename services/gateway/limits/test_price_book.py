"""The gateway's price book: a model no price covers is refused once the book has prices (unless metering
records unpriced requests), and the cost a client asks for is the integer arithmetic metering uses."""

from __future__ import annotations

import pytest
from llmserve.metering.v1 import metering_pb2 as pb

from services.contracts.pricing import event_cost, from_message
from services.gateway.errors import ApiError
from services.gateway.limits.price_book import PriceBook, cost_fields

NOW = 1_800_000_000.0


class _Metering:
    def __init__(self, book: pb.ListPricesResponse) -> None:
        self.book = book

    async def list_prices(self) -> pb.ListPricesResponse:
        return self.book


def _price(model: str, start: float, prompt: int, completion: int) -> pb.Price:
    message = pb.Price(price_id=f"price_{model}_{start:.0f}", model_name=model, currency="USD")
    message.prompt_micro, message.cached_prompt_micro, message.completion_micro = prompt, prompt // 2, completion
    message.effective_from.FromSeconds(int(start))
    return message


async def test_unpriced_models_are_refused_and_costs_follow_the_price_in_force() -> None:
    book = pb.ListPricesResponse(
        prices=[_price("m1", NOW - 10, 150_000, 600_000), _price("m1", NOW + 10, 200_000, 900_000)],
        currency="USD",
        refuse_unpriced=True,
    )
    now = [NOW]
    prices = PriceBook(_Metering(book), 1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    await prices._read()
    assert prices.admit("launch-7", "m1") is not None  # the registered model's price covers its launch
    with pytest.raises(ApiError) as refused:
        prices.admit("m2", "")
    assert (refused.value.status, refused.value.code) == (403, "model_not_priced")
    price = prices.price("m1", "")
    assert price == from_message(book.prices[0])
    cost = cost_fields(price, 1000, 100, 200)
    assert cost["cost_details"] == {"currency": "USD", "micro": event_cost(1000, 200, 100, price)}
    now[0] = NOW + 10
    assert prices.price("m1", "") == from_message(book.prices[1])
    # Metering set to record unpriced requests: nothing is refused at admission.
    book.refuse_unpriced = False
    await prices._read()
    prices.admit("m2", "")
    assert cost_fields(None, 1, 1, 0) == {}
