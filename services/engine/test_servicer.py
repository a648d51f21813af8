"""The engine's RPCs against an in-process grpc.aio server on port 0, over a scripted backend that reports
its usage as the vLLM adapter does: wire translation, who bills what, held usage, and error statuses.
The real engine (vLLM) is exercised by tests/test_engine.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc

from services.engine.generation import (
    ChoiceDelta,
    FinishReason,
    GenerationRequest,
    GenerationUpdate,
    ModelInfo,
    Timings,
    Usage,
)
from services.engine.model_host import LaunchSpec, ModelHost
from services.engine.server import build_engine_server
from services.engine.usage.accounting import Counted, EngineUsage
from services.engine.usage.billing import ANONYMOUS_CALLER
from services.engine.usage.internal_callers import Metered

MODEL = "scripted"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class ScriptedBackend:
    """Streams "a", "b" (two tokens after a three-token prompt)."""

    def __init__(self, spec: LaunchSpec, usage: EngineUsage) -> None:
        self.usage = usage
        self.info = ModelInfo(spec.uid, "/models/scripted", 64, "float32", "cpu", spec.model_name)
        self.open_streams = 0
        self.dead = False

    async def start(self) -> None:
        pass

    def models(self) -> list[ModelInfo]:
        return [self.info]

    def load(self) -> tuple[int, int]:
        return 0, self.open_streams

    def shutdown(self) -> None:
        pass

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationUpdate]:
        self.usage.opened(request, self.info.id)
        counted: Counted | None = None
        metered = False
        try:
            yield GenerationUpdate([ChoiceDelta(0, "a", [1])], Usage(3, 1), model=self.info.id)
            counted = Counted(Usage(3, 2), [FinishReason.STOP], Timings(total_seconds=0.5))
            metered = await self.usage.meter(request, self.info, counted)
            last = ChoiceDelta(0, "b", [2], finish_reason=FinishReason.STOP)
            yield GenerationUpdate([last], Usage(3, 2), finished=True, timings=counted.timings, model=self.info.id)
        finally:
            self.usage.closed(request, self.info, counted, metered)


class RecordedCallers:
    """Stands in for the engine's outbox of internal callers' events."""

    def __init__(self) -> None:
        self.events: list[Metered] = []

    async def record(self, metered: Metered) -> None:
        self.events.append(metered)

    def record_soon(self, metered: Metered) -> None:
        self.events.append(metered)


@pytest.fixture
async def engine() -> AsyncIterator[tuple[engine_pb2_grpc.EngineServiceStub, RecordedCallers]]:
    callers = RecordedCallers()
    host = ModelHost(ScriptedBackend, EngineUsage(internal=callers))  # type: ignore[arg-type]
    await host.launch(LaunchSpec(MODEL, MODEL, "scripted"))
    server = build_engine_server(host, "127.0.0.1:0")
    await server.server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield engine_pb2_grpc.EngineServiceStub(channel), callers
    await server.server.stop(None)


def chat(request_id: str, caller: str = "") -> pb.GenerateRequest:
    request = pb.GenerateRequest(request_id=request_id, model=MODEL, caller=caller, usage_context=b"event")
    request.chat.messages.add(role=pb.ROLE_USER, content="hi")
    return request


async def test_a_gateways_request_is_held_for_it_until_confirmed(engine) -> None:
    stub, callers = engine
    messages = [m async for m in stub.Generate(chat("r1", caller="gw-1/inc-1"))]
    assert [c.text for m in messages for c in m.choices] == ["a", "b"]
    final = messages[-1]
    assert final.finished and final.model == MODEL and final.choices[0].finish_reason == pb.FINISH_REASON_STOP
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (3, 2)
    load = await stub.GetLoad(pb.GetLoadRequest())
    assert (load.finished_streams, load.prompt_tokens, load.completion_tokens, load.held_usage) == (1, 3, 2, 1)
    # A later incarnation of the same source claims it, with the event it carried.
    claimed = await stub.ClaimUsage(pb.ClaimUsageRequest(source="gw-1", exclude_incarnation="inc-2"))
    [held] = claimed.usage
    assert (held.request_id, held.usage_context, held.usage.completion_tokens) == ("r1", b"event", 2)
    assert list(held.finish_reasons) == [pb.FINISH_REASON_STOP]
    await stub.ConfirmUsage(pb.ConfirmUsageRequest(request_ids=["r1"], caller="gw-1/inc-2"))
    assert (await stub.GetLoad(pb.GetLoadRequest())).held_usage == 0
    assert callers.events == [], "a gateway bills its own requests"


async def test_a_request_naming_no_caller_is_metered_by_the_engine(engine) -> None:
    stub, callers = engine
    [message async for message in stub.Generate(chat("r2"))]
    [metered] = callers.events
    assert (metered.caller, metered.usage, metered.finish_reasons) == (
        ANONYMOUS_CALLER,
        Usage(3, 2),
        [FinishReason.STOP],
    )
    assert (await stub.GetLoad(pb.GetLoadRequest())).held_usage == 0


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda s: s.Generate(pb.GenerateRequest(model="nope", text="x")).read(), grpc.StatusCode.NOT_FOUND),
        (lambda s: s.Generate(pb.GenerateRequest(model=MODEL)).read(), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda s: s.Embed(pb.EmbedRequest(model=MODEL)), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda s: s.ClaimUsage(pb.ClaimUsageRequest()), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda s: s.ClaimUsage(pb.ClaimUsageRequest(expired=True)), grpc.StatusCode.INVALID_ARGUMENT),
        (
            lambda s: s.LaunchModel(pb.LaunchModelRequest(uid="m", engine_args_json="{")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (lambda s: s.LaunchModel(pb.LaunchModelRequest(uid=MODEL, source="x")), grpc.StatusCode.ALREADY_EXISTS),
        (lambda s: s.TerminateModel(pb.TerminateModelRequest(uid="nope")), grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_bad_requests_get_precise_statuses_and_the_engine_keeps_serving(engine, call, code) -> None:
    stub, _ = engine
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(stub)
    assert refused.value.code() == code
    assert [m.id for m in (await stub.ListModels(pb.ListModelsRequest())).models] == [MODEL]
    assert (await stub.GetLoad(pb.GetLoadRequest())).finished_streams == 0, "a refused request counts nothing"
