"""The official OpenAI SDK against the real gateway and the real engine."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import openai
import pytest

from tests.calls import assert_error, post
from tests.stack import ADMIN_HEADERS, API_KEY, MODEL, metric, start_gateway, wait_for, wait_idle

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(gateway_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


async def prompt_tokens(gateway_url: str, messages: list[dict] | None = None, prompt: str | None = None) -> int:
    body = {"model": MODEL, "messages": messages} if messages is not None else {"model": MODEL, "prompt": prompt}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        reply = await http.post(f"{gateway_url}/tokenize", json=body)
    reply.raise_for_status()
    return reply.json()["count"]


async def scrape(gateway_url: str) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{gateway_url}/metrics", headers=ADMIN_HEADERS)).text


async def test_models(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert (await client.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_chat_not_streamed(client: openai.AsyncOpenAI, gateway_url: str) -> None:
    reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == await prompt_tokens(gateway_url, MESSAGES)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens_details.cached_tokens == 0


async def test_chat_stream_has_openai_shape_and_exact_usage(client: openai.AsyncOpenAI, gateway_url: str) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0, stream=True, logprobs=True
    )
    chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, usage_chunk = chunks
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert any(c.choices and c.choices[0].finish_reason for c in body)
    assert all(c.usage is None for c in body)
    tokens = sum(len(c.choices[0].logprobs.content) for c in body if c.choices and c.choices[0].logprobs)
    assert usage_chunk.usage.completion_tokens == tokens
    assert usage_chunk.usage.prompt_tokens == await prompt_tokens(gateway_url, MESSAGES)
    text = "".join(c.choices[0].delta.content or "" for c in body if c.choices)
    assert "Paris" in text


async def test_continuous_usage_and_include_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    chunks = [chunk async for chunk in stream]
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 5


async def test_completions_n_seed_stop_logprobs(client: openai.AsyncOpenAI, gateway_url: str) -> None:
    args = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=42, n=2, logprobs=2)
    first = await client.completions.create(**args)
    second = await client.completions.create(**args)
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert sorted(c.index for c in first.choices) == [0, 1]
    assert first.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in first.choices)
    assert first.usage.prompt_tokens == await prompt_tokens(gateway_url, prompt="Once upon a time")
    for choice in first.choices:
        assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
        assert "".join(choice.logprobs.tokens) == choice.text
    stopped = await client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=20, temperature=0, stop=[" 8"]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert " 8" not in stopped.choices[0].text and "7" in stopped.choices[0].text


async def test_completions_stream_n_and_prompt_list(client: openai.AsyncOpenAI) -> None:
    stream = await client.completions.create(
        model=MODEL,
        prompt=["Hello", "The sky is"],
        max_tokens=4,
        n=2,
        stream=True,
        temperature=1.0,
        extra_body={"ignore_eos": True},
    )
    chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    finishes = {c.index: c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason}
    assert finishes == {0: "length", 1: "length", 2: "length", 3: "length"}
    assert usage.completion_tokens == 16


async def test_json_response_format(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a JSON object with a key a."}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_object"},
    )
    text = reply.choices[0].message.content
    assert text.lstrip().startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a JSON object with a key a."}],
        max_tokens=30,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert isinstance(json.loads(reply.choices[0].message.content)["a"], int)


async def test_disconnect_aborts_in_engine_and_still_counts(gateway_url: str, engine_address: str) -> None:
    before = metric(await scrape(gateway_url), "gateway_completion_tokens_total", model=MODEL)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 500, "stream": True, "ignore_eos": True}
    received = 0
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.stream("POST", f"{gateway_url}/v1/chat/completions", json=body) as reply:
            async for line in reply.aiter_lines():
                if '"content":"' in line and '"role"' not in line:
                    received += 1
                if received == 5:
                    break
    await wait_idle(engine_address)

    async def counted() -> bool:
        return metric(await scrape(gateway_url), "gateway_completion_tokens_total", model=MODEL) > before

    await wait_for(counted, 10, "the aborted stream's tokens in the gateway's metrics")
    after = metric(await scrape(gateway_url), "gateway_completion_tokens_total", model=MODEL)
    assert 5 <= after - before < 500


async def test_64_simultaneous_streams(client: openai.AsyncOpenAI, gateway_url: str) -> None:
    expected_prompt = await prompt_tokens(gateway_url, MESSAGES)

    async def one(i: int) -> tuple[int, int, int]:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=6, stream=True, logprobs=True, seed=i, temperature=1.0
        )
        tokens = 0
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].logprobs:
                tokens += len(chunk.choices[0].logprobs.content)
            if chunk.usage is not None:
                usage = chunk.usage
        return tokens, usage.completion_tokens, usage.prompt_tokens

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(64))), timeout=300)
    assert len(results) == 64
    for tokens, completion, prompt in results:
        assert tokens == completion and 1 <= completion <= 6
        assert prompt == expected_prompt


# Errors: the status and OpenAI's error object.


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b'{"model": "x", "messages": [', 400, ["JSON"]),
        ({"model": MODEL, "messages": "hello"}, 400, ["messages"]),
        ({"model": MODEL, "messages": MESSAGES, "temperature": 5}, 400, ["temperature"]),
        ({"model": MODEL, "messages": MESSAGES, "n": 0}, 400, ["n"]),
        ({"model": MODEL, "messages": []}, 400, ["messages"]),
        ({"model": MODEL, "messages": MESSAGES, "max_tokens": 5000}, 400, ["2048", "5000"]),
        ({"model": MODEL, "messages": MESSAGES, "tools": [{"type": "function"}]}, 400, ["tools", "function"]),
        ({"model": MODEL, "messages": MESSAGES, "logit_bias": {"1": 2}, "user": "u"}, 400, ["logit_bias"]),
        ({"model": "no-such-model", "messages": MESSAGES}, 404, ["no-such-model"]),
    ],
    ids=[
        "malformed-json",
        "wrong-type",
        "out-of-range",
        "n-zero",
        "empty-messages",
        "context-length",
        "tool-without-function",
        "unsupported-logit-bias",
        "unknown-model",
    ],
)
async def test_chat_errors(gateway_url: str, body: bytes | dict, status: int, words: list[str]) -> None:
    assert_error(await post(f"{gateway_url}/v1/chat/completions", body), status, *words)


async def test_auth_errors(gateway_url: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}
    assert_error(await post(f"{gateway_url}/v1/chat/completions", body, key=None), 401, "API key")
    error = assert_error(await post(f"{gateway_url}/v1/chat/completions", body, key="sk-wrong"), 401)
    assert error["code"] == "invalid_api_key"
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{gateway_url}/health")).status_code == 200
        assert (await http.get(f"{gateway_url}/metrics")).status_code == 401
        assert (await http.get(f"{gateway_url}/metrics", headers=ADMIN_HEADERS)).status_code == 200
        assert (await http.get(f"{gateway_url}/v1/models")).status_code == 401


async def test_body_too_large(gateway_url: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    assert_error(await post(f"{gateway_url}/v1/chat/completions", body), 413)


async def test_in_flight_limit_and_engine_unavailable(log_dir: Path, engine_address: str) -> None:
    limited = await asyncio.to_thread(start_gateway, log_dir, engine_address, "gateway-limited", max_in_flight="1")
    try:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 300, "stream": True, "ignore_eos": True}
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            async with http.stream("POST", f"{limited.address}/v1/chat/completions", json=body) as reply:
                assert reply.status_code == 200
                assert_error(await post(f"{limited.address}/v1/chat/completions", body), 429)
    finally:
        limited.stop()
    dead = await asyncio.to_thread(start_gateway, log_dir, "127.0.0.1:1", "gateway-no-engine", healthy=False)
    try:
        short = {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}
        assert_error(await post(f"{dead.address}/v1/chat/completions", short), 503)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{dead.address}/health")).status_code == 503
    finally:
        dead.stop()
    await wait_idle(engine_address)


async def test_tokenize_detokenize_and_openapi(gateway_url: str) -> None:
    count = await prompt_tokens(gateway_url, prompt="Hello world")
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        tokens = (await http.post(f"{gateway_url}/tokenize", json={"model": MODEL, "prompt": "Hello world"})).json()
        assert tokens["count"] == count == len(tokens["tokens"])
        text = (await http.post(f"{gateway_url}/detokenize", json={"model": MODEL, "tokens": tokens["tokens"]})).json()
        assert text == {"prompt": "Hello world"}
        spec = (await http.get(f"{gateway_url}/openapi.json", headers=ADMIN_HEADERS)).json()
        assert "/v1/chat/completions" in spec["paths"]


async def test_metrics_follow_prometheus_conventions(gateway_url: str) -> None:
    text = await scrape(gateway_url)
    for name in (
        "gateway_requests_total",
        "gateway_prompt_tokens_total",
        "gateway_completion_tokens_total",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_inter_token_latency_seconds_bucket",
        "gateway_request_duration_seconds_bucket",
        "gateway_requests_in_flight",
    ):
        assert name in text
    assert metric(text, "gateway_requests_total", endpoint="/v1/chat/completions", status="200") > 0
    assert metric(text, "gateway_requests_total", endpoint="/v1/chat/completions", status="404") > 0
    # Unknown model names never become label values.
    assert "no-such-model" not in text
    assert not re.search(r'model="(?!SmolLM2-135M-Instruct|other)', text)
