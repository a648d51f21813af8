"""The price book's RPCs: protobuf in and out of the store; nothing else."""

from __future__ import annotations

import grpc
from llmserve.metering.v1 import metering_pb2 as pb

from services.contracts.pricing import Price
from services.metering.ledger import Ledger
from services.metering.price_file import InvalidPrices, parse
from services.metering.store import UsageStore

_FORMATS = ("yaml", "csv")


def price_message(price: Price) -> pb.Price:
    message = pb.Price(
        price_id=price.price_id,
        model_name=price.model_name,
        currency=price.currency,
        prompt_micro=price.prompt,
        cached_prompt_micro=price.cached_prompt,
        completion_micro=price.completion,
        image_micro=price.image,
        embedding_input_micro=price.embedding_input,
    )
    message.effective_from.FromNanoseconds(int(price.effective_from * 1e9))
    return message


class PriceRpcs:
    _ledger: Ledger
    _refuse_unpriced: bool

    async def ImportPrices(
        self, request: pb.ImportPricesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPricesResponse:
        kind = request.format or "yaml"
        if kind not in _FORMATS:
            raise InvalidPrices([f"format: must be one of {', '.join(_FORMATS)}"])
        rows = parse(request.content, kind)
        prices = await self._ledger.change(UsageStore.import_prices, rows=rows, actor=request.actor)
        return pb.ListPricesResponse(
            prices=[price_message(p) for p in prices],
            currency=prices[0].currency,
            refuse_unpriced=self._refuse_unpriced,
        )

    async def ListPrices(
        self, request: pb.ListPricesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPricesResponse:
        prices = await self._ledger.read(UsageStore.list_prices, model_name=request.model_name)
        return pb.ListPricesResponse(
            prices=[price_message(p) for p in prices],
            currency=prices[0].currency if prices else "",
            refuse_unpriced=self._refuse_unpriced,
        )
