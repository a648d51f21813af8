"""/v1/prices: the price book kept in metering. Any key reads it; the operator's admin key imports prices
(a JSON body, or a YAML or CSV file as text), all or none: every problem is listed, among them a model
name this gateway does not know (neither served, registered nor launched)."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter
from llmserve.metering.v1 import metering_pb2 as mpb
from pydantic import Field

from services.gateway.dependencies import Access, KeyId, Models
from services.gateway.errors import ApiError
from services.gateway.openai_api.protocol import ValidText
from services.gateway.ops.metering_calls import KeyAdmin, admin_client, call

router = APIRouter(prefix="/v1")
MAX_CONTENT = 1 << 20


class PriceImport(ValidText):
    """Either `prices` (with `currency`), or a file's `content` in `format`."""

    currency: str = Field("", max_length=3)
    prices: list[dict] | None = Field(None, max_length=10_000)
    content: str | None = Field(None, max_length=MAX_CONTENT)
    format: Literal["yaml", "csv"] = "yaml"


def price_json(price: mpb.Price) -> dict:
    return {
        "object": "price",
        "id": price.price_id,
        "model": price.model_name,
        "currency": price.currency,
        "effective_from": price.effective_from.seconds,
        # Per million tokens, in micro-units (one millionth of the currency).
        "prompt_micro_per_million": price.prompt_micro,
        "cached_prompt_micro_per_million": price.cached_prompt_micro,
        "completion_micro_per_million": price.completion_micro,
        # Per unit, in micro-units.
        "image_micro": price.image_micro,
        "embedding_input_micro": price.embedding_input_micro,
    }


def _models_of(body: PriceImport) -> list[str]:
    if body.prices is not None:
        return [str(p.get("model", "")) for p in body.prices if isinstance(p, dict)]
    if body.format == "csv":
        lines = (body.content or "").splitlines()
        header = lines[0].split(",") if lines else []
        column = header.index("model") if "model" in header else None
        return [] if column is None else [line.split(",")[column] for line in lines[1:] if line.strip()]
    return []


@router.get("/prices")
async def list_prices(admin: KeyAdmin, model: str = "") -> dict:
    book = await call(admin_client(admin).list_prices(model), "price")
    return {"object": "list", "currency": book.currency, "data": [price_json(p) for p in book.prices]}


@router.post("/prices")
async def import_prices(body: PriceImport, access: Access, key_id: KeyId, admin: KeyAdmin, models: Models) -> dict:
    if not access.is_operator(key_id):
        raise ApiError(403, "Setting prices needs the operator's admin API key.", code="permission_denied")
    if (body.prices is None) == (body.content is None):
        raise ApiError(400, "Give either `prices` or `content`.", param="prices", code="invalid_value")
    known = models.known_names()
    unknown = sorted({m for m in _models_of(body) if m and m not in known})
    if unknown:
        raise ApiError(
            400, f"prices: unknown models {unknown} (neither served, registered nor launched)", param="prices"
        )
    if body.prices is not None:
        # The characters themselves, not JSON escapes: YAML reads "\ud845\udf95" as two lone surrogates.
        content = json.dumps({"currency": body.currency, "prices": body.prices}, ensure_ascii=False)
        request = mpb.ImportPricesRequest(content=content, format="yaml", actor=key_id)
    else:
        request = mpb.ImportPricesRequest(content=body.content, format=body.format, actor=key_id)
    book = await call(admin_client(admin).import_prices(request), "price")
    return {"object": "list", "currency": book.currency, "data": [price_json(p) for p in book.prices]}
