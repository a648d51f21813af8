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
        args = {
            k: v for k, v in extra.items() if k not in _IGNORED_LAUNCH_FIELDS | {"peft_model_config"} and v is not None
        }
        if self.loras():
            # vLLM's LoRA switches, unless the launch sets them itself.
            args = {"enable_lora": True, "max_loras": len(self.loras()), **args}
        return args

    def loras(self) -> list[tuple[str, str]]:
        """Xinference's `peft_model_config.lora_list`: (name, folder) of each adapter to load at launch."""
        config = (self.model_extra or {}).get("peft_model_config")
        if config is None:
            return []
        lora_list = config.get("lora_list") if isinstance(config, dict) else None
        if not isinstance(lora_list, list) or not all(
            isinstance(x, dict) and isinstance(x.get("lora_name"), str) and isinstance(x.get("local_path"), str)
            for x in lora_list
        ):
            raise ApiError(
                400,
                'peft_model_config: {"lora_list": [{"lora_name": ..., "local_path": ...}]}',
                param="peft_model_config",
                code="invalid_value",
            )
        return [(x["lora_name"], x["local_path"]) for x in lora_list]


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
    loras = body.loras()
    uid = await models.launch(body.model_name, body.model_uid, body.replica, body.engine_args())
    try:
        for name, path in loras:
            await models.load_adapter(uid, name, path)
    except BaseException:
        await models.terminate(uid)
        raise
    metrics.known_models.update([uid, *(name for name, _ in loras)])
    return {"model_uid": uid}


@router.delete("/models/{model_uid}")
async def terminate(model_uid: str, models: Models, key_id: KeyId) -> None:
    await models.terminate(model_uid)
