"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter, in vLLM's shapes (admin keys only): an adapter
is loaded onto every engine serving its base model and is then a model of its own in /v1/models (`parent`:
its base). vLLM's server has one base model; here `base_model` names it when more than one runs."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from services.gateway.dependencies import Metrics, Models
from services.gateway.openai_api.protocol import Strict

router = APIRouter(prefix="/v1")


class LoadAdapterBody(Strict):
    lora_name: str
    # A PEFT adapter folder on the engines' hosts.
    lora_path: str
    base_model: str | None = None
    load_inplace: bool = False


class UnloadAdapterBody(Strict):
    lora_name: str
    lora_int_id: int | None = None


@router.post("/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(body: LoadAdapterBody, models: Models, metrics: Metrics) -> str:
    if body.load_inplace and await models.serves_adapter(body.lora_name):
        await models.unload_adapter(body.lora_name)
    await models.load_adapter(body.base_model, body.lora_name, body.lora_path)
    metrics.known_models.add(body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadAdapterBody, models: Models) -> str:
    await models.unload_adapter(body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."
