"""The RPCs of API keys, teams and organisations: protobuf in and out of the store; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from llmserve.metering.v1 import metering_pb2 as pb

from services.metering.accounts import Organization, Team
from services.metering.key_watch import KeyWatch
from services.metering.keys import KeyRecord
from services.metering.ledger import Ledger
from services.metering.store import UsageStore


def _stamp(message: Timestamp, seconds: float | None) -> None:
    if seconds is not None:
        message.FromNanoseconds(int(seconds * 1e9))


def key_message(record: KeyRecord, with_hashes: bool = False) -> pb.ApiKey:
    """The key as admins see it; with_hashes adds what a gateway checks a secret against."""
    message = pb.ApiKey(
        key_id=record.key_id,
        name=record.name,
        display_prefix=record.display_prefix,
        allowed_models=list(record.allowed_models),
        metadata=record.metadata,
        version=record.version,
        team_id=record.team_id,
        org_id=record.org_id,
        role=record.role,
        team_allowed_models=list(record.team_allowed_models),
        include_cost=record.include_cost,
    )
    _stamp(message.created_at, record.created_at)
    for name in ("expires_at", "revoked_at", "previous_valid_until"):
        value = getattr(record, name)
        if value is not None:
            _stamp(getattr(message, name), value)
    if with_hashes:
        message.secret_sha256 = bytes.fromhex(record.secret_sha256)
        if record.previous_secret_sha256:
            message.previous_secret_sha256 = bytes.fromhex(record.previous_secret_sha256)
    return message


def organization_message(org: Organization) -> pb.Organization:
    message = pb.Organization(org_id=org.org_id, name=org.name, time_zone=org.time_zone, metadata=org.metadata)
    _stamp(message.created_at, org.created_at)
    return message


def team_message(team: Team) -> pb.Team:
    message = pb.Team(
        team_id=team.team_id,
        org_id=team.org_id,
        name=team.name,
        allowed_models=list(team.allowed_models),
        metadata=team.metadata,
    )
    _stamp(message.created_at, team.created_at)
    return message


def scope(request: object) -> str | None:
    """The organisation an org admin's request is confined to; None for the operator's."""
    return getattr(request, "scope_org_id", "") or None


def _seconds(message: object, field: str) -> float | None:
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value: Timestamp = getattr(message, field)
    return value.seconds + value.nanos / 1e9


class KeyRpcs:
    _ledger: Ledger
    _keys: KeyWatch

    async def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.aio.ServicerContext) -> pb.IssuedKey:
        record, secret = await self._ledger.change(
            UsageStore.create_key,
            name=request.name,
            expires_at=_seconds(request, "expires_at"),
            allowed_models=list(request.allowed_models),
            metadata=dict(request.metadata),
            actor=request.actor,
            team_id=request.team_id,
            org_id=request.org_id,
            role=request.role,
            scope=scope(request),
            include_cost=request.include_cost,
        )
        self._keys.poke()
        return pb.IssuedKey(key=key_message(record), secret=secret)

    async def ListKeys(self, request: pb.ListKeysRequest, context: grpc.aio.ServicerContext) -> pb.ListKeysResponse:
        keys = await self._ledger.read(
            UsageStore.list_keys, include_revoked=request.include_revoked, scope=scope(request), team_id=request.team_id
        )
        return pb.ListKeysResponse(keys=[key_message(k) for k in keys])

    async def GetKey(self, request: pb.GetKeyRequest, context: grpc.aio.ServicerContext) -> pb.ApiKey:
        return key_message(await self._ledger.read(UsageStore.get_key, key_id=request.key_id, scope=scope(request)))

    async def UpdateKey(self, request: pb.UpdateKeyRequest, context: grpc.aio.ServicerContext) -> pb.ApiKey:
        record = await self._ledger.change(
            UsageStore.update_key,
            key_id=request.key_id,
            actor=request.actor,
            name=request.name if request.HasField("name") else None,
            expires_at=_seconds(request, "expires_at"),
            clear_expiry=request.clear_expiry,
            allowed_models=list(request.allowed_models) if request.replace_allowed_models else None,
            metadata=dict(request.metadata) if request.replace_metadata else None,
            team_id=request.team_id if request.HasField("team_id") else None,
            role=request.role if request.HasField("role") else None,
            scope=scope(request),
            include_cost=request.include_cost if request.HasField("include_cost") else None,
        )
        self._keys.poke()
        return key_message(record)

    async def RotateKey(self, request: pb.RotateKeyRequest, context: grpc.aio.ServicerContext) -> pb.IssuedKey:
        record, secret = await self._ledger.change(
            UsageStore.rotate_key,
            key_id=request.key_id,
            grace_seconds=request.grace_seconds,
            actor=request.actor,
            scope=scope(request),
        )
        self._keys.poke()
        return pb.IssuedKey(key=key_message(record), secret=secret)

    async def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.aio.ServicerContext) -> pb.ApiKey:
        record = await self._ledger.change(
            UsageStore.revoke_key, key_id=request.key_id, actor=request.actor, scope=scope(request)
        )
        self._keys.poke()
        return key_message(record)

    async def CreateOrganization(
        self, request: pb.CreateOrganizationRequest, context: grpc.aio.ServicerContext
    ) -> pb.Organization:
        org = await self._ledger.change(
            UsageStore.create_organization,
            name=request.name,
            time_zone=request.time_zone,
            metadata=dict(request.metadata),
            actor=request.actor,
        )
        return organization_message(org)

    async def ListOrganizations(
        self, request: pb.ListOrganizationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOrganizationsResponse:
        orgs = await self._ledger.read(UsageStore.list_organizations, scope=scope(request))
        return pb.ListOrganizationsResponse(organizations=[organization_message(o) for o in orgs])

    async def GetOrganization(
        self, request: pb.GetOrganizationRequest, context: grpc.aio.ServicerContext
    ) -> pb.Organization:
        org = await self._ledger.read(UsageStore.get_organization, org_id=request.org_id, scope=scope(request))
        return organization_message(org)

    async def CreateTeam(self, request: pb.CreateTeamRequest, context: grpc.aio.ServicerContext) -> pb.Team:
        team = await self._ledger.change(
            UsageStore.create_team,
            org_id=request.org_id,
            name=request.name,
            allowed_models=list(request.allowed_models),
            metadata=dict(request.metadata),
            actor=request.actor,
            scope=scope(request),
        )
        return team_message(team)

    async def UpdateTeam(self, request: pb.UpdateTeamRequest, context: grpc.aio.ServicerContext) -> pb.Team:
        team = await self._ledger.change(
            UsageStore.update_team,
            team_id=request.team_id,
            actor=request.actor,
            scope=scope(request),
            name=request.name if request.HasField("name") else None,
            allowed_models=list(request.allowed_models) if request.replace_allowed_models else None,
            metadata=dict(request.metadata) if request.replace_metadata else None,
        )
        self._keys.poke()
        return team_message(team)

    async def ListTeams(self, request: pb.ListTeamsRequest, context: grpc.aio.ServicerContext) -> pb.ListTeamsResponse:
        teams = await self._ledger.read(UsageStore.list_teams, org_id=request.org_id, scope=scope(request))
        return pb.ListTeamsResponse(teams=[team_message(t) for t in teams])

    async def GetTeam(self, request: pb.GetTeamRequest, context: grpc.aio.ServicerContext) -> pb.Team:
        return team_message(await self._ledger.read(UsageStore.get_team, team_id=request.team_id, scope=scope(request)))

    async def WatchKeys(
        self, request: pb.WatchKeysRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.KeysUpdate]:
        async for full, keys in self._keys.updates():
            yield pb.KeysUpdate(full=full, keys=[key_message(k, with_hashes=True) for k in keys])
