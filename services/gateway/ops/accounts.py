"""/v1/organizations and /v1/teams, kept in metering. The operator's admin key creates organisations (each
with the time zone its budget periods follow); an admin manages teams, an organisation's admin those of
its own organisation (it sees no other)."""

from __future__ import annotations

from fastapi import APIRouter
from llmserve.metering.v1 import metering_pb2 as mpb
from pydantic import Field

from services.gateway.dependencies import Access, KeyId
from services.gateway.errors import ApiError
from services.gateway.openai_api.protocol import ValidText
from services.gateway.ops.metering_calls import KeyAdmin, admin_client, call, replace_fields

router = APIRouter(prefix="/v1")
_WHAT = "Managing teams and organizations"


class NewOrganization(ValidText):
    name: str = Field(min_length=1, max_length=100)
    time_zone: str = Field("UTC", max_length=64, description="IANA name; fixed once created")
    metadata: dict[str, str] = Field(default_factory=dict)


class NewTeam(ValidText):
    name: str = Field(min_length=1, max_length=100)
    org_id: str = Field("", max_length=64, description="an organization's admin: its own by default")
    allowed_models: list[str] = Field(default_factory=list, max_length=100)
    metadata: dict[str, str] = Field(default_factory=dict)


class TeamChanges(ValidText):
    name: str | None = Field(None, min_length=1, max_length=100)
    allowed_models: list[str] | None = Field(None, max_length=100)
    metadata: dict[str, str] | None = None


def organization_json(org: mpb.Organization) -> dict:
    return {
        "object": "organization",
        "id": org.org_id,
        "name": org.name,
        "time_zone": org.time_zone,
        "created_at": org.created_at.seconds,
        "metadata": dict(org.metadata),
    }


def team_json(team: mpb.Team) -> dict:
    return {
        "object": "team",
        "id": team.team_id,
        "org_id": team.org_id,
        "name": team.name,
        "created_at": team.created_at.seconds,
        "allowed_models": list(team.allowed_models),
        "metadata": dict(team.metadata),
    }


@router.post("/organizations")
async def create_organization(body: NewOrganization, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    if access.admin_scope(key_id, _WHAT) is not None:
        raise ApiError(403, "Creating an organization needs the operator's admin API key.", code="permission_denied")
    request = mpb.CreateOrganizationRequest(
        name=body.name, time_zone=body.time_zone, metadata=body.metadata, actor=key_id
    )
    return organization_json(await call(admin_client(admin).create_organization(request), "organization"))


@router.get("/organizations")
async def list_organizations(access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    orgs = await call(admin_client(admin).list_organizations(scope or ""), "organization")
    return {"object": "list", "data": [organization_json(o) for o in orgs], "has_more": False}


@router.get("/organizations/{org_id}")
async def get_organization(org_id: str, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    return organization_json(await call(admin_client(admin).get_organization(org_id, scope or ""), "organization"))


@router.post("/teams")
async def create_team(body: NewTeam, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    request = mpb.CreateTeamRequest(
        org_id=body.org_id or scope or "",
        name=body.name,
        allowed_models=body.allowed_models,
        metadata=body.metadata,
        actor=key_id,
        scope_org_id=scope or "",
    )
    return team_json(await call(admin_client(admin).create_team(request), "team"))


@router.get("/teams")
async def list_teams(access: Access, key_id: KeyId, admin: KeyAdmin, org_id: str = "") -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    teams = await call(admin_client(admin).list_teams(org_id, scope or ""), "team")
    return {"object": "list", "data": [team_json(t) for t in teams], "has_more": False}


@router.get("/teams/{team_id}")
async def get_team(team_id: str, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    return team_json(await call(admin_client(admin).get_team(team_id, scope or ""), "team"))


@router.post("/teams/{team_id}")
async def update_team(team_id: str, body: TeamChanges, access: Access, key_id: KeyId, admin: KeyAdmin) -> dict:
    scope = access.admin_scope(key_id, _WHAT)
    change = mpb.UpdateTeamRequest(team_id=team_id, actor=key_id, scope_org_id=scope or "")
    replace_fields(change, body.name, body.allowed_models, body.metadata)
    return team_json(await call(admin_client(admin).update_team(change), "team"))
