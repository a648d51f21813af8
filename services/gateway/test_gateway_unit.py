"""Fast gateway tests against a scripted fake engine (an in-process grpc.aio server on port 0).
The real engine is exercised by tests/test_gateway_openai.py; these cover paths it cannot provoke."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import orjson
import pytest
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc

from services.engine.client import EngineClient
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings


class FakeEngine(engine_pb2_grpc.EngineServiceServicer):
    """Streams three one-token messages; `fail_after_start` ends the stream with an error instead."""

    def __init__(self) -> None:
        self.fail_after_start = False
        self.hold = asyncio.Event()
        self.hold.set()
        self.aborted: list[str] = []

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        if request.model == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "The model `missing` does not exist.")
        await self.hold.wait()
        for i in range(3):
            yield pb.GenerateResponse(
                request_id=request.request_id,
                choices=[pb.ChoiceDelta(index=0, text=f"t{i}", token_ids=[i])],
                usage=pb.Usage(prompt_tokens=4, completion_tokens=i + 1),
            )
        if self.fail_after_start:
            yield pb.GenerateResponse(
                request_id=request.request_id,
                choices=[pb.ChoiceDelta(index=0, finish_reason=pb.FINISH_REASON_ERROR)],
                usage=pb.Usage(prompt_tokens=4, completion_tokens=3),
                finished=True,
                error="the engine died during the request",
            )
            return
        yield pb.GenerateResponse(
            request_id=request.request_id,
            choices=[pb.ChoiceDelta(index=0, finish_reason=pb.FINISH_REASON_STOP)],
            usage=pb.Usage(prompt_tokens=4, completion_tokens=3, cached_tokens=2),
            finished=True,
        )

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelCard(id="fake", max_model_len=128)])


@pytest.fixture
async def fake():
    engine = FakeEngine()
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServiceServicer_to_server(engine, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    engine.address = f"127.0.0.1:{port}"
    yield engine
    await server.stop(None)


async def gateway(fake: FakeEngine, **settings):
    app = create_app(GatewaySettings(engine_addr=fake.address, **settings), EngineClient(fake.address))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


def events(body: bytes) -> list[dict | str]:
    out: list[dict | str] = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block.removeprefix(b"data: ")
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_open_without_keys_and_forced_usage_chunk(fake: FakeEngine) -> None:
    async for client in gateway(fake):
        reply = await client.post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 200
        stream = events(reply.content)
        assert stream[-1] == "[DONE]"
        usage = stream[-2]
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
        assert usage["usage"]["prompt_tokens_details"]["cached_tokens"] == 2
        text = "".join(c["delta"].get("content", "") for e in stream[:-2] for c in e["choices"])
        assert text == "t0t1t2"


async def test_usage_chunk_follows_the_client_when_not_forced(fake: FakeEngine) -> None:
    async for client in gateway(fake, force_include_usage=False):
        stream = events((await client.post("/v1/chat/completions", json=CHAT)).content)
        assert all(e == "[DONE]" or e["choices"] for e in stream)
        asked = {**CHAT, "stream_options": {"include_usage": True}}
        stream = events((await client.post("/v1/chat/completions", json=asked)).content)
        assert stream[-2]["choices"] == [] and stream[-2]["usage"]["total_tokens"] == 7


async def test_error_after_the_stream_started_is_an_sse_error_then_done(fake: FakeEngine) -> None:
    fake.fail_after_start = True
    async for client in gateway(fake):
        reply = await client.post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 200
        stream = events(reply.content)
        assert stream[-1] == "[DONE]"
        assert stream[-2]["error"]["message"] == "the engine died during the request"
        assert stream[-3]["usage"]["completion_tokens"] == 3
        not_streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
        assert not_streamed.status_code == 500
        assert not_streamed.json()["error"]["code"] == "engine_error"


async def test_engine_status_maps_to_http(fake: FakeEngine) -> None:
    async for client in gateway(fake):
        reply = await client.post("/v1/chat/completions", json={**CHAT, "model": "missing"})
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "model_not_found"


async def test_in_flight_limit(fake: FakeEngine) -> None:
    fake.hold.clear()
    async for client in gateway(fake, max_in_flight=1):
        first = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await asyncio.sleep(0.2)
        second = await client.post("/v1/chat/completions", json=CHAT)
        assert second.status_code == 429
        assert second.json()["error"]["type"] == "rate_limit_error"
        fake.hold.set()
        assert (await first).status_code == 200
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_keys_file_and_metrics_guard(fake: FakeEngine, tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nalpha:sk-a\nbeta:sk-b\n")
    async for client in gateway(fake, api_keys_file=keys, metrics_require_key=True):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": "Bearer sk-b"})).status_code == 200
        ok = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-a"})
        assert ok.status_code == 200
