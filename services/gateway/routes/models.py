"""GET /v1/models and /v1/models/{model}, from the engine's served models."""

from __future__ import annotations

import time

import grpc
from fastapi import APIRouter

from services.gateway.dependencies import KeyId, State
from services.gateway.errors import ApiError, from_grpc

router = APIRouter(prefix="/v1")

_CREATED = int(time.time())


async def _cards(state: State) -> list[dict]:
    try:
        models = await state.engine.list_models(timeout=10.0)
    except grpc.aio.AioRpcError as error:
        raise from_grpc(error) from error
    state.metrics.known_models.update(m.id for m in models)
    return [
        {
            "id": m.id,
            "object": "model",
            "created": _CREATED,
            "owned_by": "llmserve",
            "root": m.root,
            "max_model_len": m.max_model_len,
        }
        for m in models
    ]


@router.get("/models")
async def list_models(state: State, key_id: KeyId) -> dict:
    return {"object": "list", "data": await _cards(state)}


@router.get("/models/{model:path}")
async def get_model(model: str, state: State, key_id: KeyId) -> dict:
    for card in await _cards(state):
        if card["id"] == model:
            return card
    raise ApiError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
