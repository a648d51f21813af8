"""Anthropic's Messages API through the real stack with Anthropic's own SDK, unchanged (the session's
engine, a gateway, metering on SQLite): plain, streamed, with a forced tool and its result, count_tokens
equal to the usage's input, hang-ups billed what the engine made, errors in Anthropic's shape, and every
call in metering under its endpoint. (An image: tests/test_images.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.stack import (
    ADMIN_API_KEY,
    API_KEY,
    MODEL,
    engine_baseline,
    metered_gateway,
    metering_reaches_engine,
    wait_for,
)
from tools.processes import ServiceProcess

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ASK = [{"role": "user", "content": "What is the capital of France? One word."}]


@pytest.fixture(scope="module")
def stack(log_dir: Path, tmp_path_factory: pytest.TempPathFactory, engine_address: str) -> Iterator[tuple]:
    with metered_gateway(log_dir, tmp_path_factory.mktemp("messages"), engine_address, "messages") as stack:
        yield stack


def client(gateway: ServiceProcess, key: str = API_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.address, api_key=key, max_retries=0)


def recorded(database: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT event_id, endpoint, prompt_tokens, cached_tokens, completion_tokens, streamed FROM events"
        ).fetchall()


async def _event_of(database: Path, message_id: str) -> tuple:
    async def there() -> bool:
        return any(row[0] == message_id for row in recorded(database))

    await wait_for(there, 30, f"{message_id} to be recorded")
    return next(row for row in recorded(database) if row[0] == message_id)


async def test_a_message_plain_and_streamed_is_metered_exactly(stack: tuple) -> None:
    gateway, _, database = stack
    sdk = client(gateway)
    message = await sdk.messages.create(model=MODEL, max_tokens=12, messages=ASK)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    counted = await sdk.messages.count_tokens(model=MODEL, messages=ASK)
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == counted.input_tokens
    row = await _event_of(database, message.id)
    assert row[1:] == ("/v1/messages", counted.input_tokens, usage.cache_read_input_tokens, usage.output_tokens, 0)

    kinds: list[str] = []
    async with sdk.messages.stream(model=MODEL, max_tokens=16, messages=ASK, system="Answer briefly.") as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert final.content[0].text and final.usage.output_tokens > 0
    row = await _event_of(database, final.id)
    assert row[1] == "/v1/messages" and row[5] == 1
    assert (row[2] - row[3], row[3], row[4]) == (
        final.usage.input_tokens,
        final.usage.cache_read_input_tokens,
        final.usage.output_tokens,
    )


async def test_a_forced_tool_call_and_its_result(stack: tuple) -> None:
    gateway, _, database = stack
    sdk = client(gateway)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = await sdk.messages.create(
        model=MODEL,
        max_tokens=48,
        messages=ask,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    uses = [b for b in called.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and isinstance(uses[0].input, dict), called
    follow = [
        *ask,
        {"role": "assistant", "content": [u.model_dump() for u in uses]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 21 C"}]},
    ]
    answer = await sdk.messages.create(model=MODEL, max_tokens=12, messages=follow, tools=[WEATHER])
    counted = await sdk.messages.count_tokens(model=MODEL, messages=follow, tools=[WEATHER])
    assert answer.content and answer.usage.input_tokens + answer.usage.cache_read_input_tokens == counted.input_tokens
    assert counted.input_tokens > called.usage.input_tokens + called.usage.cache_read_input_tokens
    assert (await _event_of(database, answer.id))[2] == counted.input_tokens
    # A tool_result whose call is not in the message before it: Anthropic's 400.
    orphan = [*ask, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]
    with pytest.raises(anthropic.BadRequestError, match="matches no tool_use"):
        await sdk.messages.create(model=MODEL, max_tokens=8, messages=orphan)


async def test_bad_requests_get_anthropics_error_shape_and_nothing_is_billed(stack: tuple) -> None:
    gateway, _, database = stack
    before = len(recorded(database))
    async with httpx.AsyncClient(base_url=gateway.address, timeout=30) as http:
        headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
        missing = await http.post("/v1/messages", json={"model": MODEL, "messages": ASK}, headers=headers)
        assert missing.status_code == 400
        assert missing.json()["type"] == "error" and missing.json()["error"]["type"] == "invalid_request_error"
        assert "max_tokens" in missing.json()["error"]["message"]
        unknown = {"model": MODEL, "messages": ASK, "max_tokens": 4, "thinking": {"type": "enabled"}}
        refused = await http.post("/v1/messages", json=unknown, headers=headers)
        assert refused.status_code == 400 and "thinking" in refused.json()["error"]["message"]
        bad_key = await http.post("/v1/messages", json={**unknown, "thinking": None}, headers={"x-api-key": "sk-no"})
        assert bad_key.status_code == 401 and bad_key.json()["error"]["type"] == "authentication_error"
        wrong_model = {"model": "no-such-model", "messages": ASK, "max_tokens": 4}
        not_found = await http.post("/v1/messages", json=wrong_model, headers=headers)
        assert not_found.status_code == 404 and not_found.json()["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError):
        await client(gateway, "sk-nobody").messages.create(model=MODEL, max_tokens=4, messages=ASK)
    await asyncio.sleep(1)
    assert len(recorded(database)) == before


async def test_clients_hanging_up_mid_message_are_billed_what_the_engine_made(
    stack: tuple, engine_address: str
) -> None:
    gateway, metering, _ = stack
    counting = [{"role": "user", "content": "Count from one to one hundred, in words."}]
    admin = anthropic.AsyncAnthropic(base_url=gateway.address, api_key=ADMIN_API_KEY, max_retries=0)
    offset = await engine_baseline(engine_address, metering.address)

    async def one(i: int) -> None:
        async with admin.messages.stream(model=MODEL, max_tokens=64, messages=counting) as stream:
            seen = 0
            async for _ in stream:
                seen += 1
                if seen > 3 + i:
                    break  # the SDK closes the connection: a hang-up

    await asyncio.gather(*(one(i) for i in range(6)))
    # Metering's totals gain exactly what the engine made since (the earlier tests' usage is in both).
    await metering_reaches_engine(metering.address, engine_address, offset, 60)
