"""The gateway's copy of metering's price book: read at start, when metering's key watch says something
changed, and every poll; it decides at admission whether a model may run (once the book has a price,
a model no price covers is refused, unless metering records such requests as unpriced) and what a
request cost, for a client that asks (`usage.cost`). Metering prices every event itself when it records
it; the two use the same integer arithmetic (services.contracts.pricing)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable

import grpc

from services.contracts.metering_client import MeteringClient
from services.contracts.pricing import Price, event_cost, from_message, in_force, show
from services.gateway.errors import ApiError
from services.gateway.limits.poked_poll import PokedPoll

log = logging.getLogger(__name__)


class PriceBook:
    def __init__(self, metering: MeteringClient, poll_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._metering = metering
        self._clock = clock
        self._by_model: dict[str, list[Price]] = {}
        self.currency = ""
        self._refuse_unpriced = False
        self._poll = PokedPoll(self._read, poll_seconds)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self._read()
        self._task = asyncio.create_task(self._poll.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def poke(self) -> None:
        self._poll.poke()

    async def _read(self) -> None:
        try:
            book = await self._metering.list_prices()
        except grpc.aio.AioRpcError as error:
            log.warning("could not read the price book: %s (the last one read stays)", error.code().name)
            return
        by_model: dict[str, list[Price]] = defaultdict(list)
        for message in book.prices:
            by_model[message.model_name].append(from_message(message))
        self._by_model, self.currency, self._refuse_unpriced = dict(by_model), book.currency, book.refuse_unpriced

    def price(self, model: str, model_name: str) -> Price | None:
        """The price in force now for the registered model, else for the served one."""
        now = self._clock()
        for name in dict.fromkeys(n for n in (model_name, model) if n):
            found = in_force(self._by_model.get(name, []), now)
            if found is not None:
                return found
        return None

    def admit(self, model: str, model_name: str) -> Price | None:
        """The price in force for the request's model; ApiError 403 model_not_priced when the book refuses
        a model no price covers."""
        price = self.price(model, model_name)
        if price is None and self._refuse_unpriced and self._by_model:
            raise ApiError(
                403,
                f"The model `{model}` has no price in force, and this deployment refuses unpriced requests.",
                param="model",
                code="model_not_priced",
            )
        return price


def cost_fields(price: Price | None, prompt: int, completion: int, cached: int, images: int = 0) -> dict:
    """OpenRouter's `cost` (in the price's currency) with its exact micro-units; nothing when unpriced."""
    if price is None:
        return {}
    micro = event_cost(prompt, cached, completion, price, images)
    return {"cost": float(show(micro, "").strip()), "cost_details": {"currency": price.currency, "micro": micro}}
