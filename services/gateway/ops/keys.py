"""/v1/keys: API keys issued at run time, kept in metering. An admin key creates (the secret is in that one
answer), lists, changes, rotates and revokes them; an organisation's admin key does so within its
organisation; any key reads its own record. Every gateway replica learns of a change from metering's
key watch (services.gateway.issued_keys)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from llmserve.metering.v1 import metering_pb2 as mpb
from pydantic import Field

from services.gateway.dependencies import Access, KeyId
from services.gateway.openai_api.protocol import ValidText
from services.gateway.ops.metering_calls import KeyAdmin, admin_client, call, replace_fields, stamp, unix

router = APIRouter(prefix="/v1")
_WHAT = "Managing API keys"


# The end of year 9999 (UTC): the latest time a protobuf Timestamp holds.
MAX_UNIX_SECONDS = 253_402_300_799


class NewKey(ValidText):
    name: str = Field(min_length=1, max_length=100)
    expires_at: int | None = Field(None, ge=0, le=MAX_UNIX_SECONDS, description="Unix seconds; none: never")
    allowed_models: list[str] = Field(default_factory=list, max_length=100)
    metadata: dict[str, str] = Field(default_factory=dict)
    team_id: str = Field("", max_length=64)
    org_id: str = Field("", max_length=64, description="for a key in no team (an organization's admin key)")
    role: Literal["member", "org_admin"] = "member"
    include_cost: bool = Field(False, description="every response's usage carries its cost")


class KeyChanges(ValidText):
    """A field left out stays as it is; expires_at null: never expires; team_id "": out of its team."""

    name: str | None = Field(None, min_length=1, max_length=100)
    expires_at: int | None = Field(None, ge=0, le=MAX_UNIX_SECONDS)
    allowed_models: list[str] | None = Field(None, max_length=100)
    metadata: dict[str, str] | None = None
    team_id: str | None = Field(None, max_length=64)
    role: Literal["member", "org_admin"] | None = None
    include_cost: bool | None = None


class Rotation(ValidText):
    grace_seconds: float = Field(0.0, ge=0, le=86400)


def key_json(key: mpb.ApiKey, secret: str | None = None) -> dict:
    body = {
        "object": "api_key",
        "id": key.key_id,
        "name": key.name,
        "redacted_value": f"{key.display_prefix}…",
        "created_at": key.created_at.seconds,
        "expires_at": unix(key.expires_at, key.HasField("expires_at")),
        "revoked_at": unix(key.revoked_at, key.HasField("revoked_at")),
        "previous_valid_until": unix(key.previous_valid_until, key.HasField("previous_valid_until")),
        "allowed_models": list(key.allowed_models),
        "metadata": dict(key.metadata),
        "team_id": key.team_id or None,
        "org_id": key.org_id or None,
        "role": key.role,
        "include_cost": key.include_cost,
    }
    if secret is not None:
        body["value"] = secret
    return body


@router.post("/keys")
async def create_key(body: NewKey, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    request = mpb.CreateKeyRequest(
        name=body.name,
        allowed_models=body.allowed_models,
        metadata=body.metadata,
        actor=key_id,
        team_id=body.team_id,
        org_id=body.org_id,
        role=body.role,
        scope_org_id=scope or "",
        include_cost=body.include_cost,
    )
    if body.expires_at is not None:
        request.expires_at.CopyFrom(stamp(body.expires_at))
    issued = await call(admin_client(admin).create_key(request), "key")
    return key_json(issued.key, issued.secret)


@router.get("/keys")
async def list_keys(
    access: Access, key_id: KeyId, admin: KeyAdmin, include_revoked: bool = False, team_id: str = ""
) -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    keys = await call(admin_client(admin).list_keys(include_revoked, scope or "", team_id), "key")
    return {"object": "list", "data": [key_json(k) for k in keys], "has_more": False}


@router.get("/keys/{wanted}")
async def get_key(wanted: str, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    scope = None if wanted == key_id else access.admin_scope(key_id, _WHAT)
    return key_json(await call(admin_client(admin).get_key(wanted, scope or ""), "key"))


@router.post("/keys/{wanted}")
async def update_key(wanted: str, body: KeyChanges, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    given = body.model_fields_set
    change = mpb.UpdateKeyRequest(key_id=wanted, actor=key_id, scope_org_id=scope or "")
    replace_fields(change, body.name, body.allowed_models, body.metadata)
    if "expires_at" in given:
        if body.expires_at is None:
            change.clear_expiry = True
        else:
            change.expires_at.CopyFrom(stamp(body.expires_at))
    if body.team_id is not None:
        change.team_id = body.team_id
    if body.role is not None:
        change.role = body.role
    if body.include_cost is not None:
        change.include_cost = body.include_cost
    return key_json(await call(admin_client(admin).update_key(change), "key"))


@router.post("/keys/{wanted}/rotate")
async def rotate_key(wanted: str, body: Rotation, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    rotation = mpb.RotateKeyRequest(
        key_id=wanted, grace_seconds=body.grace_seconds, actor=key_id, scope_org_id=scope or ""
    )
    issued = await call(admin_client(admin).rotate_key(rotation), "key")
    return key_json(issued.key, issued.secret)


@router.delete("/keys/{wanted}")
async def revoke_key(wanted: str, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    return key_json(await call(admin_client(admin).revoke_key(wanted, key_id, scope or ""), "key"))
