"""GET /v1/models and /v1/models/{uid}: the running models, as OpenAI's model objects that also carry
Xinference's description (model_type, model_name, model_ability, context_length, ...)."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.dependencies import Access, KeyId, Metrics, Models

router = APIRouter(prefix="/v1")


@router.get("/models")
async def list_models(models: Models, metrics: Metrics, access: Access, key_id: KeyId) -> dict:
    running = await models.running()
    metrics.known_models.update(m.uid for m in running)
    return {"object": "list", "data": [m.description(access.is_operator(key_id)) for m in running]}


@router.get("/models/{model:path}")
async def get_model(model: str, models: Models, access: Access, key_id: KeyId) -> dict:
    return (await models.describe(model)).description(access.is_operator(key_id))
