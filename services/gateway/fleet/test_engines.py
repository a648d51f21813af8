"""The fleet's routing and polling, against fake engine clients (the real processes are in tests/test_fleet.py)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.errors import ApiError
from services.gateway.fleet.engines import EngineFleet, EngineMember, resolve
from services.gateway.fleet.router import RequestRouter
from services.gateway.limits.admission import embedding_tokens
from services.gateway.streaming.open_generations import OpenGenerations


class FakeEngine:
    def __init__(self, address: str, models: list[str], memory: int = 1 << 30) -> None:
        self.address = address
        self.models = models
        self.memory = memory
        self.up = True
        # Set: a poll waits in list_models until the test opens it.
        self.gate: asyncio.Event | None = None
        self.polled = asyncio.Event()

    async def list_models(self, timeout: float | None = None) -> list[pb.ModelCard]:
        models = list(self.models)
        self.polled.set()
        if self.gate is not None:
            await self.gate.wait()
        if not self.up:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        return [pb.ModelCard(id=m, model_name=m) for m in models]

    async def load(self, timeout: float | None = None) -> pb.GetLoadResponse:
        return pb.GetLoadResponse(memory_available_bytes=self.memory, models=len(self.models))

    async def close(self) -> None:
        pass


def fleet_of(*engines: FakeEngine) -> EngineFleet:
    return EngineFleet([e.address for e in engines], None, clients={e.address: e for e in engines})


def test_names_resolve_to_addresses_and_literals_stay() -> None:
    assert resolve("localhost:50051") == ["127.0.0.1:50051"]
    assert resolve("10.1.2.3:50051") == ["10.1.2.3:50051"]
    assert resolve("no-such-host.invalid:1") == ["no-such-host.invalid:1"]


async def test_requests_go_to_the_least_busy_healthy_replica() -> None:
    a, b, c = (
        FakeEngine("10.0.0.1:1", ["tiny", "big"]),
        FakeEngine("10.0.0.2:1", ["tiny"]),
        FakeEngine("10.0.0.3:1", []),
    )
    fleet = fleet_of(a, b, c)
    await fleet.refresh()
    picks = [fleet.pick("tiny").address for _ in range(4)]
    assert sorted(picks) == sorted([a.address, b.address] * 2), "idle replicas take turns"
    fleet.member(a.address).outstanding = 3
    assert fleet.pick("tiny").address == b.address
    assert fleet.pick("big").address == a.address, "only a serves it, however busy"
    assert fleet.pick("tiny", exclude=[b.address]).address == a.address
    assert fleet.alternatives("tiny", [a.address]) and not fleet.alternatives("big", [a.address])
    assert fleet.model_name("big") == "big" and fleet.model_name("nope") == ""


async def test_reading_a_models_card_does_not_move_the_turn() -> None:
    """Admission reads a model's length before a limited key's request is routed: only the router picks."""
    a, b = FakeEngine("10.0.0.1:1", ["tiny"]), FakeEngine("10.0.0.2:1", ["tiny"])
    fleet = fleet_of(a, b)
    await fleet.refresh()
    request = pb.EmbedRequest(model="tiny", inputs=[pb.EmbedInput(text="x")])
    picks = []
    for _ in range(6):
        embedding_tokens(fleet, request)
        picks.append(fleet.pick("tiny").address)
    assert picks == [picks[0], picks[1]] * 3 and picks[0] != picks[1]


async def test_an_engine_that_fails_a_poll_leaves_rotation_and_rejoins() -> None:
    a, b = FakeEngine("10.0.0.1:1", ["tiny"]), FakeEngine("10.0.0.2:1", ["tiny"])
    fleet = fleet_of(a, b)
    await fleet.refresh()
    b.up = False
    await fleet.refresh()
    assert {fleet.pick("tiny").address for _ in range(4)} == {a.address}
    b.up = True
    await fleet.refresh()
    assert {fleet.pick("tiny").address for _ in range(4)} == {a.address, b.address}


async def test_a_poll_that_began_before_a_launch_does_not_undo_it() -> None:
    a = FakeEngine("10.0.0.1:1", ["tiny"])
    fleet = fleet_of(a)
    await fleet.refresh()
    member = fleet.member(a.address)
    a.gate, a.polled = asyncio.Event(), asyncio.Event()
    stale = asyncio.create_task(fleet.refresh())
    await a.polled.wait()
    member.set_card("launched", pb.ModelCard(id="launched"))
    a.gate.set()
    await stale
    assert member.serves("launched")


async def test_a_unary_call_refused_as_unavailable_goes_to_another_replica_and_counts_while_it_runs() -> None:
    a, b = FakeEngine("10.0.0.1:1", ["tiny"]), FakeEngine("10.0.0.2:1", ["tiny"])
    fleet = fleet_of(a, b)
    await fleet.refresh()
    router = RequestRouter(fleet, OpenGenerations(), timeout=5, settle_timeout=1)
    tried: list[str] = []

    async def embed(member: EngineMember) -> str:
        tried.append(member.address)
        assert member.outstanding == 1, "the call holds its replica's count while it runs"
        if len(tried) == 1:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        return member.address

    assert await router.call("tiny", embed) == tried[1] != tried[0]
    assert not fleet.member(tried[0]).healthy and fleet.member(tried[1]).healthy
    assert [m.outstanding for m in fleet.members] == [0, 0]

    async def refused(member: EngineMember) -> str:
        raise grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "bad")

    with pytest.raises(ApiError) as error:
        await router.call("tiny", refused)
    assert error.value.status == 400
