"""Money through the real stack (the session's engine, a gateway, metering on SQLite): prices imported
through the gateway, a price change in the middle of a run of streams, hang-ups, n>1 and a forced tool
call, and every recorded event's cost equal to its tokens times the price in force when it occurred, to
the micro-unit; the totals equal the sum. A bad price import is refused whole, naming every problem.
(Priced per image: tests/test_images.py; per embedding input: tests/test_embeddings.py.)"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from llmserve.metering.v1 import metering_pb2 as mpb

from services.contracts.pricing import event_cost, from_message, in_force
from tests.calls import stream_chat
from tests.credentials import metering_client
from tests.stack import ADMIN_API_KEY, MODEL, metered_gateway, wait_for, wait_idle
from tools.processes import ServiceProcess

ADMIN = {"Authorization": f"Bearer {ADMIN_API_KEY}"}


@pytest.fixture(scope="module")
def priced(log_dir: Path, tmp_path_factory: pytest.TempPathFactory, engine_address: str) -> Iterator[tuple]:
    with metered_gateway(log_dir, tmp_path_factory.mktemp("prices"), engine_address, "prices") as stack:
        yield stack


async def _post(gateway: ServiceProcess, path: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(timeout=120, headers=ADMIN) as http:
        return await http.post(f"{gateway.address}{path}", json=body)


async def test_a_bad_price_import_is_refused_whole_naming_every_problem(priced: tuple) -> None:
    gateway, _, _ = priced
    unknown = await _post(gateway, "/v1/prices", {"currency": "USD", "prices": [{"model": "no-such-model"}]})
    assert unknown.status_code == 400 and "no-such-model" in unknown.json()["error"]["message"]
    rows = [
        {"model": MODEL, "prompt": "-1", "completion": "1"},
        {"model": MODEL, "prompt": "0.0000001", "completion": 0.5},
    ]
    bad = await _post(gateway, "/v1/prices", {"currency": "USD", "prices": rows})
    assert bad.status_code == 400, bad.text
    message = bad.json()["error"]["message"]
    for problem in ("row 1: prompt", "row 2: prompt", "row 2: completion: write amounts as strings"):
        assert problem in message, message
    async with httpx.AsyncClient(timeout=30, headers=ADMIN) as http:
        assert (await http.get(f"{gateway.address}/v1/prices")).json()["data"] == []


async def test_every_event_costs_its_tokens_at_the_price_in_force(priced: tuple, engine_address: str) -> None:
    gateway, metering, database = priced
    price = {"model": MODEL, "prompt": "0.15", "cached_prompt": "0.075", "completion": "0.6"}
    first = await _post(gateway, "/v1/prices", {"currency": "USD", "prices": [price]})
    assert first.status_code == 200, first.text

    async def run() -> int:
        """Streams, a hang-up, n=2 and a forced tool call; the number of requests."""
        await wait_idle(engine_address)
        calls = [stream_chat(gateway.address, ADMIN_API_KEY, 8, text=f"Count to {i}.") for i in range(3)]
        calls.append(stream_chat(gateway.address, ADMIN_API_KEY, 64, hang_up_after=0.5))
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "n": 2}
        function = {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}
        tool = {**body, "n": 1, "max_tokens": 24, "tools": [{"type": "function", "function": function}]}
        tool["tool_choice"] = {"type": "function", "function": {"name": "get_time"}}
        answers = await asyncio.gather(
            *calls, _post(gateway, "/v1/chat/completions", body), _post(gateway, "/v1/chat/completions", tool)
        )
        assert answers[-1].json()["choices"][0]["message"]["tool_calls"], answers[-1].text
        return 6

    sent = await run()
    # A new price from a moment on: the events of the next run occur after it.
    change = int(time.time()) + 2
    later = {"model": MODEL, "prompt": "0.2", "completion": "0.9", "effective_from": change}
    second = await _post(gateway, "/v1/prices", {"currency": "USD", "prices": [later]})
    assert second.status_code == 200, second.text
    await asyncio.sleep(max(0.0, change - time.time()) + 0.1)
    sent += await run()

    async def recorded() -> bool:
        async with metering_client(metering.address) as client:
            rows = await client.totals(mpb.GetTotalsRequest())
        return bool(rows) and rows[0].totals.requests == sent

    await wait_for(recorded, 60, "every request to be recorded")
    async with metering_client(metering.address) as client:
        book = await client.list_prices(MODEL)
        answer = await client.totals_answer(mpb.GetTotalsRequest())
    prices = [from_message(p) for p in book.prices]
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        events = db.execute(
            "SELECT occurred_at, prompt_tokens, cached_tokens, completion_tokens, cost_micro, price_id,"
            " embedding_inputs FROM events"
        ).fetchall()
    assert len(events) == sent
    used = set()
    for occurred, prompt, cached, completion, cost, price_id, inputs in events:
        price = in_force(prices, occurred)
        assert price is not None and price_id == price.price_id
        assert cost == event_cost(prompt, cached, completion, price, embedding_inputs=inputs)
        used.add(price_id)
    assert used == {p.price_id for p in prices}, "both prices were in force for some events"
    totals = answer.rows[0].totals
    assert answer.currency == "USD" and totals.unpriced_requests == 0
    assert totals.cost_micro == sum(e[4] for e in events) > 0


async def test_a_client_that_asks_gets_the_cost_in_its_usage(priced: tuple) -> None:
    """OpenRouter's `usage: {include: true}`: the cost at the price in force, in the book's currency and
    exactly in micro-units; a strict OpenAI client that does not ask gets the usage it always did."""
    gateway, metering, _ = priced
    async with metering_client(metering.address) as client:
        book = await client.list_prices(MODEL)
    if not book.prices:
        price = {"model": MODEL, "prompt": "0.15", "completion": "0.6"}
        assert (await _post(gateway, "/v1/prices", {"currency": "USD", "prices": [price]})).status_code == 200
        async with metering_client(metering.address) as client:
            book = await client.list_prices(MODEL)
    price = in_force([from_message(p) for p in book.prices], time.time())
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    plain = (await _post(gateway, "/v1/chat/completions", body)).json()["usage"]
    assert "cost" not in plain
    asked = (await _post(gateway, "/v1/chat/completions", {**body, "usage": {"include": True}})).json()["usage"]
    micro = event_cost(
        asked["prompt_tokens"], asked["prompt_tokens_details"]["cached_tokens"], asked["completion_tokens"], price
    )
    assert asked["cost_details"] == {"currency": "USD", "micro": micro}
    assert asked["cost"] == micro / 1_000_000
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}, "usage": {"include": True}}
    async with httpx.AsyncClient(timeout=60, headers=ADMIN) as http:
        async with http.stream("POST", f"{gateway.address}/v1/chat/completions", json=streamed) as reply:
            lines = [line async for line in reply.aiter_lines() if line.startswith("data: {")]
    usage = json.loads(lines[-1][6:])["usage"]
    assert usage["cost_details"]["micro"] == event_cost(
        usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"], usage["completion_tokens"], price
    )
    # A key issued with include_cost gets it without asking (the OpenAI SDK, which cannot send `usage`);
    # a request that says include: false still does not.
    issued = await _post(gateway, "/v1/keys", {"name": "cost-reader", "include_cost": True})
    assert issued.status_code == 200 and issued.json()["include_cost"] is True, issued.text
    client = openai.AsyncOpenAI(base_url=f"{gateway.address}/v1", api_key=issued.json()["value"])

    async def usage_of(**extra: object) -> dict:
        seen: list[dict] = []

        async def answered() -> bool:  # the gateway learns of the new key from metering's watch
            try:
                reply = await client.chat.completions.create(
                    model=MODEL, messages=body["messages"], max_tokens=4, **extra
                )
            except openai.AuthenticationError:
                return False
            seen.append(reply.usage.model_dump())
            return True

        await wait_for(answered, 10, "the new key to be known")
        return seen[-1]

    default = await usage_of()
    assert default["cost_details"]["micro"] == event_cost(
        default["prompt_tokens"], default["prompt_tokens_details"]["cached_tokens"], default["completion_tokens"], price
    )
    assert "cost" not in await usage_of(extra_body={"usage": {"include": False}})


async def test_what_the_fuzzer_found_is_a_400_not_a_500(priced: tuple) -> None:
    """Three bodies `make fuzz` answered with a 500: a key expiring past what a timestamp holds, a name
    with a lone surrogate, a price file with nonsense rows in it."""
    gateway, _, _ = priced
    bodies = [
        ("/v1/keys", {"name": "å", "expires_at": 3000824603416454, "role": "org_admin", "org_id": ""}),
        ("/v1/keys", {"name": "\ud8a5", "expires_at": -48222756194157}),
        (
            "/v1/prices",
            {"prices": [{"t\u0080": {"4": False, "\u0082\ud845\udf95": 65023258}, "": {}}], "format": "csv"},
        ),
        ("/v1/prices", {"prices": [{"9\u0011": {"x": None}}], "currency": "Q\U000d8445\u00db"}),
    ]
    headers = {**ADMIN, "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        for path, body in bodies:
            # json.dumps escapes a lone surrogate (as the fuzzer sent it); httpx's json= cannot encode it.
            reply = await http.post(f"{gateway.address}{path}", content=json.dumps(body))
            assert reply.status_code == 400, (path, reply.status_code, reply.text)
    assert (await _post(gateway, "/v1/keys", {"name": "after-the-fuzz"})).status_code == 200
