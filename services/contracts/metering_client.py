"""A small typed async client of the metering service (the gateway's sender and the report use it)."""

from __future__ import annotations

from collections.abc import Sequence

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
        return list((await self._stub.GetTotals(request, timeout=timeout, metadata=self.metadata)).rows)

    async def series(self, request: pb.GetUsageSeriesRequest, timeout: float | None = 30.0) -> list[pb.SeriesPoint]:
        return list((await self._stub.GetUsageSeries(request, timeout=timeout, metadata=self.metadata)).points)

    async def counters(self, timeout: float | None = 10.0) -> pb.GetCountersResponse:
        return await self._stub.GetCounters(pb.GetCountersRequest(), timeout=timeout, metadata=self.metadata)

    async def throughput(self, timeout: float | None = 10.0) -> list[pb.ModelThroughput]:
        request = pb.GetThroughputRequest()
        return list((await self._stub.GetThroughput(request, timeout=timeout, metadata=self.metadata)).models)
