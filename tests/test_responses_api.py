"""OpenAI's Responses API through the real stack with the openai SDK, unchanged (the session's engine, a
gateway, metering on SQLite): plain, streamed with the SDK's event helpers, a forced function tool and its
output, a JSON schema, cut by max_output_tokens, hang-ups billed what the engine made, refusals (store,
unknown fields, an output without its call), and every call in metering under its endpoint. (An image:
tests/test_images.py.)"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.stack import (
    ADMIN_API_KEY,
    API_KEY,
    MODEL,
    engine_baseline,
    metered_gateway,
    metering_reaches_engine,
    metering_totals,
    wait_for,
)
from tools.processes import ServiceProcess

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
QUESTION = "What is the capital of France? One word."


@pytest.fixture(scope="module")
def stack(log_dir: Path, tmp_path_factory: pytest.TempPathFactory, engine_address: str) -> Iterator[tuple]:
    with metered_gateway(log_dir, tmp_path_factory.mktemp("responses"), engine_address, "responses") as stack:
        yield stack


def sdk(gateway: ServiceProcess, key: str = API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.address}/v1", api_key=key, max_retries=0)


async def _recorded(database: Path, response_id: str) -> tuple:
    def row() -> tuple | None:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            return db.execute(
                "SELECT endpoint, prompt_tokens, cached_tokens, completion_tokens, streamed FROM events"
                " WHERE event_id = ?",
                (response_id,),
            ).fetchone()

    async def there() -> bool:
        return row() is not None

    await wait_for(there, 30, f"{response_id} to be recorded")
    return row()  # type: ignore[return-value]


async def _tokenized(gateway: ServiceProcess, messages: list[dict], tools: list[dict] | None = None) -> int:
    body: dict = {"model": MODEL, "messages": messages}
    if tools:
        body["tools"] = tools
    async with httpx.AsyncClient(timeout=30) as http:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        reply = await http.post(f"{gateway.address}/tokenize", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()["count"]


async def test_a_response_plain_and_streamed_is_metered_exactly(stack: tuple) -> None:
    gateway, _, database = stack
    client = sdk(gateway)
    response = await client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=12)
    assert response.id.startswith("resp_") and response.output_text and response.status in ("completed", "incomplete")
    usage = response.usage
    assert usage.input_tokens == await _tokenized(gateway, [{"role": "user", "content": QUESTION}])
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert await _recorded(database, response.id) == (
        "/v1/responses",
        usage.input_tokens,
        usage.input_tokens_details.cached_tokens,
        usage.output_tokens,
        0,
    )

    kinds: list[str] = []
    deltas: list[str] = []
    async with client.responses.stream(
        model=MODEL, input=QUESTION, instructions="Answer briefly.", max_output_tokens=16
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type in ("response.completed", "response.incomplete"):
                # The SDK's get_final_response() takes a completed one only (as against OpenAI's API).
                final = event.response
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete") and "response.output_text.done" in kinds
    assert final.output_text == "".join(deltas) and final.usage.output_tokens > 0
    row = await _recorded(database, final.id)
    assert row == ("/v1/responses", final.usage.input_tokens, row[2], final.usage.output_tokens, 1)


async def test_a_forced_function_call_its_output_and_a_json_schema(stack: tuple) -> None:
    gateway, _, database = stack
    client = sdk(gateway)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = await client.responses.create(
        model=MODEL,
        input=ask,
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=48,
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and isinstance(json.loads(calls[0].arguments), dict), called
    follow = [
        *ask,
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"},
    ]
    answer = await client.responses.create(model=MODEL, input=follow, tools=[WEATHER], max_output_tokens=12)
    assert answer.usage.input_tokens > called.usage.input_tokens
    assert (await _recorded(database, answer.id))[1] == answer.usage.input_tokens

    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    shaped = await client.responses.create(
        model=MODEL,
        input=QUESTION,
        text={"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}},
        max_output_tokens=40,
        # Greedy: sampled, the small model may spend its tokens on the whitespace the grammar allows.
        temperature=0,
    )
    assert "capital" in json.loads(shaped.output_text)


async def test_cut_by_max_output_tokens_is_incomplete(stack: tuple) -> None:
    gateway, _, _ = stack
    poem = "Write a long poem about the sea."
    cut = await sdk(gateway).responses.create(model=MODEL, input=poem, max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage.output_tokens == 3


async def test_what_is_refused_is_refused_and_nothing_is_billed(stack: tuple) -> None:
    gateway, metering, _ = stack
    client = sdk(gateway)
    before = await metering_totals(metering.address)
    with pytest.raises(openai.BadRequestError, match="not stored"):
        await client.responses.create(model=MODEL, input=QUESTION, store=True)
    with pytest.raises(openai.BadRequestError, match="not stored"):
        await client.responses.create(model=MODEL, input=QUESTION, previous_response_id="resp_1")
    orphan = [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]
    with pytest.raises(openai.BadRequestError, match="call_9"):
        await client.responses.create(model=MODEL, input=orphan)
    with pytest.raises(openai.BadRequestError, match="reasoning"):
        await client.responses.create(model=MODEL, input=QUESTION, reasoning={"effort": "low"})
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="no-such-model", input=QUESTION)
    with pytest.raises(openai.BadRequestError, match="input"):
        await client.responses.create(model=MODEL, input=[{"type": "web_search_call", "id": "ws_1"}])
    await asyncio.sleep(1)
    assert (await metering_totals(metering.address)).requests == before.requests


async def test_clients_hanging_up_mid_response_are_billed_what_the_engine_made(
    stack: tuple, engine_address: str
) -> None:
    gateway, metering, _ = stack
    client = sdk(gateway, ADMIN_API_KEY)
    offset = await engine_baseline(engine_address, metering.address)

    async def one(i: int) -> None:
        stream = await client.responses.create(
            model=MODEL, input="Count from one to one hundred, in words.", max_output_tokens=64, stream=True
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen > 4 + i:
                break
        await stream.close()  # the connection goes: a hang-up

    await asyncio.gather(*(one(i) for i in range(6)))
    await metering_reaches_engine(metering.address, engine_address, offset, 60)
