"""A small typed async client of the metering service (the gateway's sender and the report use it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from llmserve.metering.v1 import metering_pb2 as pb
from llmserve.metering.v1 import metering_pb2_grpc

from .channel import ServiceChannel


class MeteringClient(ServiceChannel):
    def __init__(self, address: str, token: str | None = None) -> None:
        super().__init__(address, token)
        self._stub = metering_pb2_grpc.MeteringServiceStub(self._channel)

    async def record(self, events: Sequence[pb.UsageEvent], timeout: float | None = 10.0) -> list[pb.Ack]:
        request = pb.RecordUsageRequest(events=list(events))
        response = await self._stub.RecordUsage(request, timeout=timeout, metadata=self.metadata)
        return list(response.acks)

    async def totals(self, request: pb.GetTotalsRequest, timeout: float | None = 30.0) -> list[pb.TotalsRow]:
        return list((await self.totals_answer(request, timeout)).rows)

    async def totals_answer(self, request: pb.GetTotalsRequest, timeout: float | None = 30.0) -> pb.GetTotalsResponse:
        """The rows and the price book's currency."""
        return await self._stub.GetTotals(request, timeout=timeout, metadata=self.metadata)

    async def series(self, request: pb.GetUsageSeriesRequest, timeout: float | None = 30.0) -> list[pb.SeriesPoint]:
        return list((await self._stub.GetUsageSeries(request, timeout=timeout, metadata=self.metadata)).points)

    async def counters(self, timeout: float | None = 10.0) -> pb.GetCountersResponse:
        return await self._stub.GetCounters(pb.GetCountersRequest(), timeout=timeout, metadata=self.metadata)

    async def throughput(self, timeout: float | None = 10.0) -> list[pb.ModelThroughput]:
        request = pb.GetThroughputRequest()
        return list((await self._stub.GetThroughput(request, timeout=timeout, metadata=self.metadata)).models)

    async def reserve(self, request: pb.ReserveRequest, timeout: float | None = 5.0) -> pb.ReserveResponse:
        return await self._stub.Reserve(request, timeout=timeout, metadata=self.metadata)

    async def settle(
        self, source: str, event_id: str, tokens: int, cost_micro: int | None = None, timeout: float | None = 5.0
    ) -> None:
        request = pb.SettleRequest(source=source, event_id=event_id, tokens=tokens)
        if cost_micro is not None:
            request.cost_micro = cost_micro
        await self._stub.Settle(request, timeout=timeout, metadata=self.metadata)

    async def renew_lease(self, source: str, lease_seconds: float, timeout: float | None = 5.0) -> None:
        request = pb.RenewLeaseRequest(source=source, lease_seconds=lease_seconds)
        await self._stub.RenewLease(request, timeout=timeout, metadata=self.metadata)

    async def set_limits(
        self, limits: pb.KeyLimits, actor: str = "", scope_org_id: str = "", timeout: float | None = 5.0
    ) -> pb.Standing:
        request = pb.SetLimitsRequest(limits=limits, actor=actor, scope_org_id=scope_org_id)
        return (await self._stub.SetLimits(request, timeout=timeout, metadata=self.metadata)).standing

    async def list_limits(self, timeout: float | None = 5.0) -> list[pb.KeyLimits]:
        response = await self._stub.ListLimits(pb.ListLimitsRequest(), timeout=timeout, metadata=self.metadata)
        return list(response.limits)

    async def standing(self, api_key_id: str, scope_org_id: str = "", timeout: float | None = 5.0) -> pb.Standing:
        request = pb.GetStandingRequest(api_key_id=api_key_id, scope_org_id=scope_org_id)
        return await self._stub.GetStanding(request, timeout=timeout, metadata=self.metadata)

    async def create_key(self, request: pb.CreateKeyRequest, timeout: float | None = 5.0) -> pb.IssuedKey:
        return await self._stub.CreateKey(request, timeout=timeout, metadata=self.metadata)

    async def list_keys(
        self, include_revoked: bool = False, scope_org_id: str = "", team_id: str = "", timeout: float | None = 5.0
    ) -> list[pb.ApiKey]:
        request = pb.ListKeysRequest(include_revoked=include_revoked, scope_org_id=scope_org_id, team_id=team_id)
        return list((await self._stub.ListKeys(request, timeout=timeout, metadata=self.metadata)).keys)

    async def get_key(self, key_id: str, scope_org_id: str = "", timeout: float | None = 5.0) -> pb.ApiKey:
        request = pb.GetKeyRequest(key_id=key_id, scope_org_id=scope_org_id)
        return await self._stub.GetKey(request, timeout=timeout, metadata=self.metadata)

    async def update_key(self, request: pb.UpdateKeyRequest, timeout: float | None = 5.0) -> pb.ApiKey:
        return await self._stub.UpdateKey(request, timeout=timeout, metadata=self.metadata)

    async def rotate_key(self, request: pb.RotateKeyRequest, timeout: float | None = 5.0) -> pb.IssuedKey:
        return await self._stub.RotateKey(request, timeout=timeout, metadata=self.metadata)

    async def revoke_key(
        self, key_id: str, actor: str = "", scope_org_id: str = "", timeout: float | None = 5.0
    ) -> pb.ApiKey:
        request = pb.RevokeKeyRequest(key_id=key_id, actor=actor, scope_org_id=scope_org_id)
        return await self._stub.RevokeKey(request, timeout=timeout, metadata=self.metadata)

    async def create_organization(
        self, request: pb.CreateOrganizationRequest, timeout: float | None = 5.0
    ) -> pb.Organization:
        return await self._stub.CreateOrganization(request, timeout=timeout, metadata=self.metadata)

    async def list_organizations(self, scope_org_id: str = "", timeout: float | None = 5.0) -> list[pb.Organization]:
        request = pb.ListOrganizationsRequest(scope_org_id=scope_org_id)
        response = await self._stub.ListOrganizations(request, timeout=timeout, metadata=self.metadata)
        return list(response.organizations)

    async def get_organization(
        self, org_id: str, scope_org_id: str = "", timeout: float | None = 5.0
    ) -> pb.Organization:
        request = pb.GetOrganizationRequest(org_id=org_id, scope_org_id=scope_org_id)
        return await self._stub.GetOrganization(request, timeout=timeout, metadata=self.metadata)

    async def create_team(self, request: pb.CreateTeamRequest, timeout: float | None = 5.0) -> pb.Team:
        return await self._stub.CreateTeam(request, timeout=timeout, metadata=self.metadata)

    async def update_team(self, request: pb.UpdateTeamRequest, timeout: float | None = 5.0) -> pb.Team:
        return await self._stub.UpdateTeam(request, timeout=timeout, metadata=self.metadata)

    async def list_teams(self, org_id: str = "", scope_org_id: str = "", timeout: float | None = 5.0) -> list[pb.Team]:
        request = pb.ListTeamsRequest(org_id=org_id, scope_org_id=scope_org_id)
        return list((await self._stub.ListTeams(request, timeout=timeout, metadata=self.metadata)).teams)

    async def get_team(self, team_id: str, scope_org_id: str = "", timeout: float | None = 5.0) -> pb.Team:
        request = pb.GetTeamRequest(team_id=team_id, scope_org_id=scope_org_id)
        return await self._stub.GetTeam(request, timeout=timeout, metadata=self.metadata)

    def watch_keys(self) -> AsyncIterator[pb.KeysUpdate]:
        """Every key, then each change (a stream with no deadline: it lasts as long as the caller reads)."""
        return self._stub.WatchKeys(pb.WatchKeysRequest(), metadata=self.metadata)

    async def import_prices(
        self, request: pb.ImportPricesRequest, timeout: float | None = 10.0
    ) -> pb.ListPricesResponse:
        return await self._stub.ImportPrices(request, timeout=timeout, metadata=self.metadata)

    async def list_prices(self, model_name: str = "", timeout: float | None = 5.0) -> pb.ListPricesResponse:
        request = pb.ListPricesRequest(model_name=model_name)
        return await self._stub.ListPrices(request, timeout=timeout, metadata=self.metadata)
