"""Fast gateway tests against a scripted fake engine (an in-process grpc.aio server on port 0).
The real engine is exercised by tests/test_gateway_openai.py; these cover paths it cannot provoke."""

from __future__ import annotations

import asyncio
import hashlib
import json

import grpc
import httpx
import orjson
import pytest
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc

from services.contracts.engine_client import EngineClient
from services.engine.generate_many import generate_many
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.outcome import Outcome


class FakeEngine(engine_pb2_grpc.EngineServiceServicer):
    """Streams three one-token messages; `fail_after_start` ends the stream with an error instead."""

    def __init__(self) -> None:
        self.fail_after_start = False
        self.break_stream = False
        self.hold = asyncio.Event()
        self.hold.set()
        self.aborted: list[str] = []
        self.started = asyncio.Event()
        self.held: dict[str, pb.UnconfirmedUsage] = {}
        # Set: an embedding is answered (once `hold` is set) instead of lost after it was counted.
        self.answer_embeddings = False

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            sent = 0
            async for message in self._messages(request):
                yield message
                sent += 1
                if self.break_stream and sent == 2:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the connection broke")
        except LookupError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))

    async def GenerateMany(self, requests, context: grpc.aio.ServicerContext):
        statuses = {LookupError: grpc.StatusCode.NOT_FOUND}
        sent = 0
        async for batch in generate_many(lambda r: (r.request_id, self._messages(r)), _copy, statuses, requests):
            yield batch
            sent += len(batch.updates)
            if self.break_stream and sent == 2:
                # The whole stream breaks, every request on it with it.
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the connection broke")

    async def _messages(self, request: pb.GenerateRequest):
        if request.model == "missing":
            raise LookupError("The model `missing` does not exist.")
        self.started.set()
        await self.hold.wait()
        rid = request.request_id
        if rid in self.aborted:
            # As vLLM does: an abort ends the stream with a final message carrying the usage so far.
            yield pb.GenerateResponse(
                request_id=rid,
                model="fake",
                choices=[pb.ChoiceDelta(index=0, finish_reason=pb.FINISH_REASON_ABORT)],
                usage=pb.Usage(prompt_tokens=4),
                finished=True,
            )
            return
        for i in range(3):
            if self.break_stream and i == 1:
                # The engine goes on counting (and aborts once the call is gone): it will hold 5 tokens.
                self.held[rid] = pb.UnconfirmedUsage(
                    request_id=rid,
                    model="fake",
                    usage=pb.Usage(prompt_tokens=4, completion_tokens=5),
                    finish_reasons=[pb.FINISH_REASON_ABORT],
                )
            if self.break_stream and i == 2:
                await asyncio.Event().wait()
            yield pb.GenerateResponse(
                request_id=rid,
                model="fake" if i == 0 else "",
                choices=[pb.ChoiceDelta(index=0, text=f"t{i}", token_ids=[i])],
                usage=pb.Usage(prompt_tokens=4, completion_tokens=i + 1),
            )
        if self.fail_after_start:
            yield pb.GenerateResponse(
                request_id=rid,
                choices=[pb.ChoiceDelta(index=0, finish_reason=pb.FINISH_REASON_ERROR)],
                usage=pb.Usage(prompt_tokens=4, completion_tokens=3),
                finished=True,
                error="the engine died during the request",
            )
            return
        yield pb.GenerateResponse(
            request_id=rid,
            choices=[pb.ChoiceDelta(index=0, finish_reason=pb.FINISH_REASON_STOP)],
            usage=pb.Usage(prompt_tokens=4, completion_tokens=3, cached_tokens=2),
            finished=True,
        )

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        """Counts the request and holds its usage for the caller, then loses the answer on the way."""
        if self.answer_embeddings:
            self.started.set()
            await self.hold.wait()
            return pb.EmbedResponse(
                model="fake", embeddings=[pb.Embedding(values=[0.5, 0.5])], usage=pb.Usage(prompt_tokens=3)
            )
        self.held[request.request_id] = pb.UnconfirmedUsage(
            request_id=request.request_id,
            model="fake-embed",
            usage=pb.Usage(prompt_tokens=7),
            finish_reasons=[pb.FINISH_REASON_STOP],
        )
        await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost after the engine counted the request")

    async def ClaimUsage(
        self, request: pb.ClaimUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClaimUsageResponse:
        return pb.ClaimUsageResponse(usage=[self.held[r] for r in request.request_ids if r in self.held])

    async def ConfirmUsage(self, request, context):
        return pb.ConfirmUsageResponse()

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        self.aborted += request.request_ids
        self.hold.set()
        return pb.AbortResponse(aborted_ids=request.request_ids)

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelCard(id="fake", max_model_len=128)])

    async def GetLoad(self, request, context):
        return pb.GetLoadResponse(memory_total_bytes=1 << 30, memory_available_bytes=1 << 29)


def _copy(out: pb.GenerateResponse, request_id: str, message: pb.GenerateResponse) -> pb.GenerateResponse:
    out.CopyFrom(message)
    return out


# Every test runs with the gateway's engine streams on their own Generate calls and on one GenerateMany call.
@pytest.fixture(params=[False, True], ids=["per-request", "multiplexed"])
async def fake(request):
    engine = FakeEngine()
    engine.multiplexed = request.param
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServiceServicer_to_server(engine, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    engine.address = f"127.0.0.1:{port}"
    yield engine
    await server.stop(None)


async def gateway(fake: FakeEngine, recorded: list[Outcome] | None = None, **settings):
    app = create_app(
        GatewaySettings(engine_addr=fake.address, **settings), EngineClient(fake.address, multiplexed=fake.multiplexed)
    )
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        if recorded is not None:
            app.state.recorder.observers.append(recorded.append)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            client.gateway_app = app
            yield client


async def engine_has(fake: FakeEngine, request: asyncio.Task) -> None:
    """Waits until the fake engine holds `request`; an answer that came first (the gateway refused it) is
    named, not left as a timeout. Generous: the whole suite's other processes share these two cores."""
    started = asyncio.create_task(fake.started.wait())
    await asyncio.wait({started, request}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        started.cancel()
        answer = request.result() if request.done() else None
        raise AssertionError(f"the engine never got the request: {answer and (answer.status_code, answer.text)}")


def events(body: bytes) -> list[dict | str]:
    out: list[dict | str] = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block.removeprefix(b"data: ")
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}

# Usage goes to an outbox for a metering that never answers; limits let requests through (fail closed, a
# gateway that never read the limits would refuse every key).
UNREACHABLE_METERING = {"metering_addr": "127.0.0.1:9", "limits_fail_open": True, "usage_drain_seconds": 0}


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
        # The engine has the request, so its in-flight slot is taken.
        await engine_has(fake, first)
        second = await client.post("/v1/chat/completions", json=CHAT)
        assert second.status_code == 429
        assert second.json()["error"]["type"] == "rate_limit_error"
        fake.hold.set()
        assert (await first).status_code == 200
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_keys_hashed_keys_and_admin_paths(fake: FakeEngine, tmp_path) -> None:
    keys = tmp_path / "keys"
    hashed = hashlib.sha256(b"sk-b").hexdigest()
    keys.write_text(f"# team keys\nalpha:sk-a\nbeta:sha256:{hashed}\n")
    async for client in gateway(fake, api_keys_file=keys, admin_key_ids="beta"):
        alpha, beta = {"Authorization": "Bearer sk-a"}, {"Authorization": "Bearer sk-b"}
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=alpha)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=beta)).status_code == 200
        hashed_as_secret = {"Authorization": f"Bearer sha256:{hashed}"}
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=hashed_as_secret)).status_code == 401
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert (await client.get(path)).status_code == 401
            assert (await client.get(path, headers=alpha)).status_code == 403
            assert (await client.get(path, headers=beta)).status_code == 200
        health = await client.get("/health")  # open; the fake engine has no health service, hence 503
        assert health.status_code == 503 and health.json()["engine"] == "unavailable"


async def test_no_key_is_refused_before_the_body_is_read(fake: FakeEngine) -> None:
    async for client in gateway(fake, api_keys="alpha:sk-a", max_body_bytes=1024):
        for body in (b"{not json", b"x" * 4096):
            reply = await client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            assert reply.status_code == 401
            assert reply.json()["error"]["code"] == "invalid_api_key"
        assert not fake.started.is_set()


async def test_prompt_list_limit_and_each_prompt_takes_a_slot(fake: FakeEngine) -> None:
    async for client in gateway(fake, max_prompts_per_request=3, max_in_flight=2):
        completion = {"model": "fake", "max_tokens": 2}
        too_many = await client.post("/v1/completions", json={**completion, "prompt": ["a", "b", "c", "d"]})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "prompt"
        over_slots = await client.post("/v1/completions", json={**completion, "prompt": ["a", "b", "c"]})
        assert over_slots.status_code == 429
        for _ in range(2):
            reply = await client.post("/v1/completions", json={**completion, "prompt": ["a", "b"]})
            assert reply.status_code == 200, reply.text


async def test_client_gone_before_the_first_token_is_aborted_and_its_usage_read(fake: FakeEngine) -> None:
    """The HTTP task is cancelled while it waits for the first message: the engine call is not cancelled
    with it; the gateway sends Abort and reads the engine's final usage in a task of its own."""
    fake.hold.clear()
    recorded: list[Outcome] = []
    async for client in gateway(fake, recorded):
        request = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await engine_has(fake, request)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        for _ in range(100):
            if recorded:
                break
            await asyncio.sleep(0.05)
        [outcome] = recorded
        assert len(fake.aborted) == 1
        assert (outcome.status, outcome.prompt_tokens, outcome.completion_tokens) == ("abort", 4, 0)


async def test_an_embedding_counted_but_never_answered_is_billed_from_the_engines_held_usage(
    fake: FakeEngine, tmp_path
) -> None:
    recorded: list[Outcome] = []
    # Usage delivery on (metering unreachable: the outbox keeps the events), so requests name their caller.
    async for client in gateway(fake, recorded, **UNREACHABLE_METERING, data_dir=tmp_path):
        reply = await client.post("/v1/embeddings", json={"model": "fake", "input": "hi"})
        assert reply.status_code == 503
        async with asyncio.timeout(5):
            while not recorded:
                await asyncio.sleep(0.01)
        [outcome] = recorded
        assert list(fake.held) == outcome.engine_request_ids
        assert (outcome.model, outcome.prompt_tokens, outcome.completion_tokens, outcome.status) == (
            "fake-embed",
            7,
            0,
            "abort",
        )


async def test_a_call_broken_mid_stream_is_billed_from_the_engines_held_usage(fake: FakeEngine, tmp_path) -> None:
    """The connection (or the GenerateMany stream) breaks after two tokens; the engine counted five before
    its abort: the request is billed the engine's five, and the client's usage chunk says five too."""
    fake.break_stream = True
    recorded: list[Outcome] = []
    async for client in gateway(fake, recorded, **UNREACHABLE_METERING, data_dir=tmp_path):
        stream = events((await client.post("/v1/chat/completions", json=CHAT)).content)
        assert (
            "".join(
                c["delta"].get("content", "")
                for e in stream
                if isinstance(e, dict) and "choices" in e
                for c in e["choices"]
            )
            == "t0t1"
        )
        assert any(isinstance(e, dict) and "error" in e for e in stream)
        [usage] = [e["usage"] for e in stream if isinstance(e, dict) and e.get("usage")]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (4, 5)
        [outcome] = recorded
        assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.status) == (4, 5, "error")


async def test_empty_model_is_billed_under_the_engines_model(fake: FakeEngine) -> None:
    recorded: list[Outcome] = []
    async for client in gateway(fake, recorded):
        reply = await client.post("/v1/chat/completions", json={**CHAT, "model": "", "stream": False})
        assert reply.status_code == 200
        assert reply.json()["model"] == "fake"
        streamed = events((await client.post("/v1/chat/completions", json={**CHAT, "model": ""})).content)
        assert {e["model"] for e in streamed if e != "[DONE]"} == {"fake"}
        assert [o.model for o in recorded] == ["fake", "fake"]


async def test_refused_request_records_nothing(fake: FakeEngine) -> None:
    recorded: list[Outcome] = []
    async for client in gateway(fake, recorded):
        assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "missing"})).status_code == 404
        # A refusal is settled in the background: wait until nothing is left to settle.
        generations = client.gateway_app.state.generations
        async with asyncio.timeout(5):
            while generations.settling or generations.open:
                await asyncio.sleep(0.01)
        assert recorded == []


async def test_values_the_engine_contract_cannot_carry_are_400s_naming_the_field(fake: FakeEngine) -> None:
    async for client in gateway(fake):
        cases = [
            ("/detokenize", {"tokens": [1, 2**32]}, "tokens.1"),
            ("/tokenize", {"prompt": "ok \ud800"}, "prompt"),
            (
                "/v1/chat/completions",
                {**CHAT, "messages": [{"role": "user", "content": "\ud800"}]},
                "messages.0.content",
            ),
            ("/v1/chat/completions", {**CHAT, "max_tokens": 2**40}, "max_tokens"),
            ("/v1/chat/completions", {**CHAT, "seed": 2**70}, "seed"),
            ("/v1/completions", {"model": "fake", "prompt": "x", "stop": ["\ud800"]}, "stop"),
        ]
        for path, body, param in cases:
            # As JSON text carries a lone surrogate: escaped ("\\ud800").
            reply = await client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
            assert reply.status_code == 400, (path, body, reply.text)
            assert reply.json()["error"]["param"] is not None
            assert reply.json()["error"]["param"].startswith(param), (param, reply.json())
        # And the gateway goes on serving.
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


# Hostile input (issue 18): each of these failed on the stack before the fix.


async def test_two_authorization_headers_are_refused(fake: FakeEngine) -> None:
    async for client in gateway(fake, api_keys="alpha:sk-a,beta:sk-b"):
        headers = [("Authorization", "Bearer sk-a"), ("Authorization", "Bearer sk-b")]
        reply = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_api_key"
        assert not fake.started.is_set()


async def test_client_errors_are_typed_as_such_and_no_redirect_echoes_the_host(fake: FakeEngine) -> None:
    async for client in gateway(fake, api_keys="alpha:sk-a,root:sk-r", admin_key_ids="root"):
        forbidden = await client.get("/metrics", headers={"Authorization": "Bearer sk-a"})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["type"] == "invalid_request_error"
        wrong_method = await client.put("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-a"})
        assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"
        slashed = await client.get("/metrics/", headers={"Authorization": "Bearer sk-r", "Host": "evil.example"})
        assert slashed.status_code == 404 and "evil.example" not in slashed.headers.get("location", "")


async def test_where_models_live_is_for_admin_keys_and_health_names_no_address(fake: FakeEngine) -> None:
    async for client in gateway(fake, api_keys="alpha:sk-a,root:sk-r", admin_key_ids="root"):
        user, admin = {"Authorization": "Bearer sk-a"}, {"Authorization": "Bearer sk-r"}
        [seen_by_user] = (await client.get("/v1/models", headers=user)).json()["data"]
        [seen_by_admin] = (await client.get("/v1/models", headers=admin)).json()["data"]
        assert "address" not in seen_by_user and "root" not in seen_by_user
        assert seen_by_admin["address"] == fake.address
        detailed = (await client.get("/v1/model_registrations/LLM?detailed=true", headers=user)).json()
        assert all(r["model_specs"][0]["model_uri"] == "" and r["engine_args"] == {} for r in detailed)
        health = (await client.get("/health")).text
        assert fake.address not in health


async def test_tokenize_and_each_choice_take_in_flight_slots(fake: FakeEngine) -> None:
    fake.hold.clear()
    async for client in gateway(fake, max_in_flight=2):
        assert (await client.post("/v1/chat/completions", json={**CHAT, "n": 3})).status_code == 429
        first = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        await engine_has(fake, first)
        second = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
        async with asyncio.timeout(5):
            while client.gateway_app.state.in_flight.count < 2:
                await asyncio.sleep(0.01)
        assert (await client.post("/tokenize", json={"model": "fake", "prompt": "x"})).status_code == 429
        fake.hold.set()
        assert [(await t).status_code for t in (first, second)] == [200, 200]


async def test_embeddings_take_in_flight_slots_and_are_counted(fake: FakeEngine) -> None:
    fake.answer_embeddings = True
    fake.hold.clear()
    async for client in gateway(fake, max_in_flight=1):
        first = asyncio.create_task(client.post("/v1/embeddings", json={"model": "fake", "input": "hi"}))
        await engine_has(fake, first)
        async with asyncio.timeout(10):  # a request let through waits for the held engine: refused at once
            others = [await client.post("/v1/embeddings", json={"model": "fake", "input": "hi"}) for _ in range(4)]
        assert [r.status_code for r in others] == [429] * 4
        fake.hold.set()
        assert (await first).json()["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
        metrics = (await client.get("/metrics")).text
        assert 'gateway_requests_total{endpoint="/v1/embeddings",model="fake",status="200"} 1.0' in metrics
        assert 'gateway_requests_total{endpoint="/v1/embeddings",model="other",status="429"} 4.0' in metrics


async def test_a_trickled_body_gets_408(fake: FakeEngine) -> None:
    async def trickle():
        yield b'{"model": "fake",'
        await asyncio.sleep(1.0)
        yield b'"messages": []}'

    async for client in gateway(fake, body_timeout_seconds=0.3):
        reply = await client.post(
            "/v1/chat/completions", content=trickle(), headers={"content-type": "application/json"}
        )
        assert reply.status_code == 408 and reply.json()["error"]["code"] == "request_timeout"
        assert not fake.started.is_set()


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/v1/score"])
@pytest.mark.parametrize("tokens", [2**32, 2**70, -2, 0])
async def test_what_the_fuzzer_sent_to_rerank_and_score_is_a_400(fake: FakeEngine, path: str, tokens: int) -> None:
    """`make fuzz` found a 500: a truncation past uint32 reached the engine request."""
    body = {"model": "nowhere", "truncate_prompt_tokens": tokens}
    body |= {"text_1": "a", "text_2": ["b"]} if path == "/v1/score" else {"query": "a", "documents": [{"text": "b"}]}
    async for client in gateway(fake):
        reply = await client.post(path, json=body)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "truncate_prompt_tokens"
