"""Xinference's model-management REST API (what `xinference-client`'s RESTfulClient calls):
registrations, launch, terminate, and whether the cluster wants a key. Listing and describing running
models share `/v1/models` with the OpenAI routes (services.gateway.openai_api.models)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.dependencies import Access, KeyId, Metrics, Models
from services.gateway.errors import ApiError
from services.gateway.fleet.registrations import LLM, MODEL_TYPES, SERVED_TYPES, RegistrationError, parse_custom

router = APIRouter(prefix="/v1")

# Fields of Xinference's launch that choose hardware or packaging this stack leaves to vLLM's
# arguments and the engines' configuration; accepted and ignored when they are the client's defaults.
_IGNORED_LAUNCH_FIELDS = {
    "model_engine",
    "model_size_in_billions",
    "model_format",
    "quantization",
    "n_worker",
    "n_gpu",
    "peft_model_config",
    "request_limits",
    "worker_ip",
    "gpu_idx",
    "replica_config",
    "model_path",
    "enable_thinking",
    "enable_virtual_env",
    "virtual_env_packages",
    "virtual_env_find_links",
    "envs",
}


class LaunchBody(BaseModel):
    """Xinference's launch body; fields it does not name are vLLM engine arguments for this launch."""

    model_config = ConfigDict(extra="allow")

    model_name: str
    model_type: str = LLM
    model_uid: str | None = None
    replica: int = Field(1, ge=1)

    def engine_args(self) -> dict[str, Any]:
        extra = self.model_extra or {}
        return {k: v for k, v in extra.items() if k not in _IGNORED_LAUNCH_FIELDS and v is not None}


class RegisterBody(BaseModel):
    model: str
    worker_ip: str | None = None
    persist: bool = True


def _model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ApiError(
            400, f"model_type {model_type!r}: one of {', '.join(MODEL_TYPES)}", param="model_type", code="invalid_value"
        )


@router.get("/cluster/auth")
async def cluster_auth(access: Access) -> dict:
    return {"auth": not access.keys.open}


@router.get("/model_registrations/{model_type}")
async def list_registrations(
    model_type: str, models: Models, access: Access, key_id: KeyId, detailed: bool = False
) -> list[dict]:
    _model_type(model_type)
    registrations = [r for r in models.catalog.registrations() if r.model_type == model_type]
    if detailed:
        return [r.spec(access.is_operator(key_id)) for r in registrations]
    return [{"model_name": r.model_name, "is_builtin": r.is_builtin} for r in registrations]


@router.get("/model_registrations/{model_type}/{model_name}")
async def get_registration(model_type: str, model_name: str, models: Models, access: Access, key_id: KeyId) -> dict:
    _model_type(model_type)
    registration = models.catalog.registration(model_name)
    if registration is None or registration.model_type != model_type:
        raise ApiError(
            404, f"No {model_type} model registered as `{model_name}`.", param="model_name", code="model_not_found"
        )
    return registration.spec(access.is_operator(key_id))


@router.post("/model_registrations/{model_type}")
async def register(model_type: str, body: RegisterBody, models: Models, key_id: KeyId) -> None:
    _model_type(model_type)
    try:
        registration = parse_custom(model_type, body.model)
    except RegistrationError as exc:
        raise ApiError(400, str(exc), param="model", code="invalid_value") from exc
    models.catalog.register(registration)


@router.delete("/model_registrations/{model_type}/{model_name}")
async def unregister(model_type: str, model_name: str, models: Models, key_id: KeyId) -> None:
    _model_type(model_type)
    catalog = models.catalog
    if catalog.registration(model_name) is not None and catalog.registration(model_name).is_builtin:
        raise ApiError(400, f"`{model_name}` is a built-in model.", param="model_name", code="invalid_value")
    if not catalog.unregister(model_name):
        raise ApiError(
            404, f"No {model_type} model registered as `{model_name}`.", param="model_name", code="model_not_found"
        )


@router.post("/models")
async def launch(body: LaunchBody, models: Models, metrics: Metrics, key_id: KeyId) -> dict:
    if body.model_type not in SERVED_TYPES:
        raise ApiError(
            400,
            f"model_type {body.model_type!r}: this stack serves {', '.join(SERVED_TYPES)} models",
            param="model_type",
            code="invalid_value",
        )
    registration = models.catalog.registration(body.model_name)
    if registration is not None and registration.model_type != body.model_type:
        raise ApiError(
            400,
            f"`{body.model_name}` is registered as an {registration.model_type} model, not {body.model_type}",
            param="model_type",
            code="invalid_value",
        )
    uid = await models.launch(body.model_name, body.model_uid, body.replica, body.engine_args())
    metrics.known_models.add(uid)
    return {"model_uid": uid}


@router.delete("/models/{model_uid}")
async def terminate(model_uid: str, models: Models, key_id: KeyId) -> None:
    await models.terminate(model_uid)
