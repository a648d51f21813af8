"""/v1/keys: API keys issued at run time, kept in metering. An admin key creates (the secret is in that one
answer), lists, changes, rotates and revokes them; any key reads its own record. Every gateway replica
learns of a change from metering's key watch (services.gateway.issued_keys)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import grpc
from fastapi import APIRouter
from google.protobuf.timestamp_pb2 import Timestamp
from llmserve.metering.v1 import metering_pb2 as mpb
from pydantic import BaseModel, ConfigDict, Field

from services.contracts.metering_client import MeteringClient
from services.gateway.dependencies import Access, KeyId, app_state
from services.gateway.errors import ApiError

router = APIRouter(prefix="/v1")
KeyAdmin = Annotated[MeteringClient | None, app_state("key_admin")]

# Metering's refusals of a key change, as OpenAI-style errors (the message names the field).
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_value"),
    grpc.StatusCode.NOT_FOUND: (404, "key_not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "key_exists"),
}


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    expires_at: int | None = Field(None, description="Unix seconds; none: never")
    allowed_models: list[str] = Field(default_factory=list, max_length=100)
    metadata: dict[str, str] = Field(default_factory=dict)


class KeyChanges(BaseModel):
    """A field left out stays as it is; expires_at null: never expires."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=100)
    expires_at: int | None = None
    allowed_models: list[str] | None = Field(None, max_length=100)
    metadata: dict[str, str] | None = None


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: float = Field(0.0, ge=0, le=86400)


def _unix(stamp: Timestamp, present: bool) -> int | None:
    return stamp.seconds if present else None


def key_json(key: mpb.ApiKey, secret: str | None = None) -> dict:
    body = {
        "object": "api_key",
        "id": key.key_id,
        "name": key.name,
        "redacted_value": f"{key.display_prefix}…",
        "created_at": key.created_at.seconds,
        "expires_at": _unix(key.expires_at, key.HasField("expires_at")),
        "revoked_at": _unix(key.revoked_at, key.HasField("revoked_at")),
        "previous_valid_until": _unix(key.previous_valid_until, key.HasField("previous_valid_until")),
        "allowed_models": list(key.allowed_models),
        "metadata": dict(key.metadata),
    }
    if secret is not None:
        body["value"] = secret
    return body


def _admin(client: MeteringClient | None) -> MeteringClient:
    if client is None:
        raise ApiError(404, "Issued API keys need metering (GATEWAY_METERING_ADDR).", code="keys_off")
    return client


def _operator(access: Access, key_id: str) -> None:
    if not access.is_operator(key_id):
        raise ApiError(403, "Managing API keys needs an admin API key.", code="permission_denied")


async def _call(call):  # noqa: ANN001, ANN202 - an awaitable metering call
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        status, code = _HTTP.get(error.code(), (503, "keys_unavailable"))
        if status == 503:
            raise ApiError(503, "Metering cannot be reached to manage keys.", code=code) from error
        detail = error.details() or ""
        raise ApiError(status, detail, param=detail.partition(":")[0] or None, code=code) from error


def _stamp(seconds: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.fromtimestamp(seconds, UTC))
    return stamp


@router.post("/keys")
async def create_key(body: NewKey, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    _operator(access, key_id)
    request = mpb.CreateKeyRequest(
        name=body.name, allowed_models=body.allowed_models, metadata=body.metadata, actor=key_id
    )
    if body.expires_at is not None:
        request.expires_at.CopyFrom(_stamp(body.expires_at))
    issued = await _call(_admin(admin).create_key(request))
    return key_json(issued.key, issued.secret)


@router.get("/keys")
async def list_keys(access: Access, key_id: KeyId, admin: KeyAdmin, include_revoked: bool = False) -> dict:
    _operator(access, key_id)
    keys = await _call(_admin(admin).list_keys(include_revoked))
    return {"object": "list", "data": [key_json(k) for k in keys], "has_more": False}


@router.get("/keys/{wanted}")
async def get_key(wanted: str, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    if wanted != key_id:
        _operator(access, key_id)
    return key_json(await _call(_admin(admin).get_key(wanted)))


@router.post("/keys/{wanted}")
async def update_key(wanted: str, body: KeyChanges, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    _operator(access, key_id)
    given = body.model_fields_set
    change = mpb.UpdateKeyRequest(key_id=wanted, actor=key_id)
    if body.name is not None:
        change.name = body.name
    if "expires_at" in given:
        if body.expires_at is None:
            change.clear_expiry = True
        else:
            change.expires_at.CopyFrom(_stamp(body.expires_at))
    if body.allowed_models is not None:
        change.replace_allowed_models = True
        change.allowed_models.extend(body.allowed_models)
    if body.metadata is not None:
        change.replace_metadata = True
        change.metadata.update(body.metadata)
    return key_json(await _call(_admin(admin).update_key(change)))


@router.post("/keys/{wanted}/rotate")
async def rotate_key(wanted: str, body: Rotation, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    _operator(access, key_id)
    rotation = mpb.RotateKeyRequest(key_id=wanted, grace_seconds=body.grace_seconds, actor=key_id)
    issued = await _call(_admin(admin).rotate_key(rotation))
    return key_json(issued.key, issued.secret)


@router.delete("/keys/{wanted}")
async def revoke_key(wanted: str, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    _operator(access, key_id)
    return key_json(await _call(_admin(admin).revoke_key(wanted, key_id)))
