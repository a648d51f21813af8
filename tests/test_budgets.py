"""Limits per API key enforced by three gateway replicas and two metering replicas on one PostgreSQL,
with the session's engine: a budget that fits a few of 32 concurrent streams is never exceeded (checked
exactly against metering's recorded usage), per-minute limits refuse in OpenAI's shape with its headers,
a cancelled stream's unused reservation comes back at once, a gateway killed mid-stream holds nothing past
its lease, and limits set at run time apply to the next request."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from llmserve.metering.v1 import metering_pb2 as mpb

from tests.credentials import metering_client
from tests.stack import ADMIN_API_KEY, MODEL, metric, start_gateway, start_metering, wait_for, wait_idle
from tools.postgres import PostgresServer
from tools.processes import ServiceProcess, free_port

KEYS = {name: f"sk-{name}" for name in ("budget", "rpm", "tpm", "cancel", "lease", "later", "sdk", "spent", "daily")}
ADMIN = {"Authorization": f"Bearer {ADMIN_API_KEY}"}
ASK = [{"role": "user", "content": "Count to ten."}]
LEASE_SECONDS = 5.0


class Fleet:
    def __init__(self, gateways: list[ServiceProcess], meterings: list[ServiceProcess]) -> None:
        self.gateways = gateways
        self.meterings = meterings

    def url(self, i: int) -> str:
        return self.gateways[i % len(self.gateways)].address

    async def set_limits(self, key: str, gateway: int = 0, everywhere: bool = True, **limits: object) -> dict:
        """Sets them through one replica (which applies them at once); `everywhere`: then waits until every
        other replica has read which keys are limited twice since (a read begun after the change)."""
        before = [await self.limits_polls(i) for i in range(len(self.gateways))]
        async with httpx.AsyncClient(timeout=30) as http:
            reply = await http.put(f"{self.url(gateway)}/v1/limits/{key}", json=limits, headers=ADMIN)
        assert reply.status_code == 200, reply.text
        if everywhere:

            async def read_since() -> bool:
                return all([await self.limits_polls(i) >= n + 2 for i, n in enumerate(before)])

            await wait_for(read_since, 30, "every gateway to read the limits again")
        return reply.json()

    async def limits_polls(self, i: int) -> float:
        async with httpx.AsyncClient(timeout=30) as http:
            text = (await http.get(f"{self.url(i)}/metrics", headers=ADMIN)).text
        return metric(text, "gateway_limits_polls_total")

    async def standing(self, key: str) -> dict:
        async with httpx.AsyncClient(timeout=30) as http:
            reply = await http.get(f"{self.url(0)}/v1/limits", headers={"Authorization": f"Bearer {KEYS[key]}"})
        assert reply.status_code == 200, reply.text
        return reply.json()

    async def recorded(self, key: str) -> mpb.Totals:
        async with metering_client(self.meterings[1].address) as client:
            rows = await client.totals(mpb.GetTotalsRequest(api_key_id=key))
        return rows[0].totals if rows else mpb.Totals()

    async def prompt_tokens(self) -> int:
        async with httpx.AsyncClient(timeout=30) as http:
            reply = await http.post(f"{self.url(0)}/tokenize", json={"model": MODEL, "messages": ASK}, headers=ADMIN)
        return reply.json()["count"]


@pytest.fixture(scope="module")
def fleet(
    log_dir: Path, tmp_path_factory: pytest.TempPathFactory, engine_address: str, postgres_server: PostgresServer
) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("budgets")
    env = {"METERING_DATABASE_URL": postgres_server.create_database("budgets")}
    ports = [free_port(), free_port()]
    keys = ",".join(f"{name}:{secret}" for name, secret in KEYS.items()) + f",test-admin:{ADMIN_API_KEY}"
    with ThreadPoolExecutor(3) as pool:
        meterings = list(
            pool.map(
                lambda i: start_metering(log_dir, folder / f"m{i}", ports[i], f"metering-budgets-{i}", env), range(2)
            )
        )
        gateways = list(
            pool.map(
                lambda i: start_gateway(
                    log_dir,
                    engine_address,
                    f"gateway-budgets-{i}",
                    data_dir=str(folder / f"g{i}"),
                    api_keys=keys,
                    metering_addr="ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports),
                    limits_lease_seconds=str(LEASE_SECONDS),
                ),
                range(3),
            )
        )
    try:
        yield Fleet(list(gateways), list(meterings))
    finally:
        for process in (*gateways, *meterings):
            process.stop()


async def chat(url: str, key: str, max_tokens: int, stream: bool = True) -> httpx.Response:
    body = {"model": MODEL, "messages": ASK, "max_tokens": max_tokens, "stream": stream, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {KEYS[key]}"}) as http:
        reply = await http.post(f"{url}/v1/chat/completions", json=body)
        await reply.aread()
        return reply


async def recorded_settles(fleet: Fleet, key: str, requests: int) -> int:
    """Waits until metering holds `requests` events of the key and no reservation of it is open; its tokens."""

    async def settled() -> bool:
        totals = await fleet.recorded(key)
        return totals.requests == requests and (await fleet.standing(key))["usage"]["reserved_tokens"] == 0

    await wait_for(settled, 60, f"{key}'s {requests} requests to be recorded")
    totals = await fleet.recorded(key)
    return totals.prompt_tokens + totals.completion_tokens


async def test_32_streams_through_three_gateways_never_pass_a_budget_that_fits_a_few(
    fleet: Fleet, engine_address: str
) -> None:
    prompt = await fleet.prompt_tokens()
    reservation = prompt + 16
    budget = 4 * reservation + reservation // 2
    await fleet.set_limits("budget", token_budget=budget)
    await wait_idle(engine_address)
    replies = await asyncio.gather(*(chat(fleet.url(i), "budget", 16) for i in range(32)))
    granted = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert len(granted) + len(refused) == 32 and 4 <= len(granted) < 32
    for reply in refused:
        assert reply.json()["error"]["type"] == "insufficient_quota" and reply.headers["x-should-retry"] == "false"
        assert reply.headers["x-ratelimit-limit-budget-tokens"] == str(budget)
    assert all(r.headers["x-ratelimit-limit-budget-tokens"] == str(budget) for r in granted)
    spent = await recorded_settles(fleet, "budget", len(granted))
    assert spent == len(granted) * reservation <= budget
    standing = await fleet.standing("budget")
    assert standing["usage"]["budget_used"] == spent and standing["remaining"]["budget"] == budget - spent


async def test_per_minute_limits_refuse_with_openais_shape_and_headers(fleet: Fleet) -> None:
    await fleet.set_limits("rpm", requests_per_minute=5)
    replies = await asyncio.gather(*(chat(fleet.url(i), "rpm", 2, stream=False) for i in range(12)))
    assert sorted(r.status_code for r in replies) == [200] * 5 + [429] * 7
    refused = next(r for r in replies if r.status_code == 429)
    assert (
        refused.json()["error"]["type"] == "rate_limit_exceeded"
        and "requests per minute" in refused.json()["error"]["message"]
    )
    assert (
        refused.headers["x-ratelimit-limit-requests"] == "5"
        and refused.headers["x-ratelimit-remaining-requests"] == "0"
    )
    assert 0 < int(refused.headers["retry-after"]) <= 60 and refused.headers["x-ratelimit-reset-requests"].endswith("s")

    prompt = await fleet.prompt_tokens()
    tokens_per_minute = 3 * (prompt + 8) + 5
    await fleet.set_limits("tpm", tokens_per_minute=tokens_per_minute)
    replies = await asyncio.gather(*(chat(fleet.url(i), "tpm", 8) for i in range(9)))
    assert sorted(r.status_code for r in replies) == [200] * 3 + [429] * 6
    assert await recorded_settles(fleet, "tpm", 3) <= tokens_per_minute
    too_large = await chat(fleet.url(0), "tpm", tokens_per_minute)
    assert too_large.status_code == 429 and "too large" in too_large.json()["error"]["message"]


async def test_a_cancelled_stream_gives_back_its_unused_reservation_at_once(fleet: Fleet) -> None:
    prompt = await fleet.prompt_tokens()
    reservation = prompt + 400
    await fleet.set_limits("cancel", token_budget=reservation + prompt + 50)
    body = {"model": MODEL, "messages": ASK, "max_tokens": 400, "stream": True, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {KEYS['cancel']}"}) as http:
        async with http.stream("POST", f"{fleet.url(1)}/v1/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            lines = reply.aiter_lines()
            while '"content"' not in await anext(lines):
                pass
            # While it streams, its whole reservation counts: a second request does not fit.
            assert (await chat(fleet.url(2), "cancel", 400)).status_code == 429
    spent = await recorded_settles(fleet, "cancel", 1)
    assert prompt < spent < reservation
    # What it did not use is back: a request of the same size fits again.
    assert (await chat(fleet.url(0), "cancel", 400 - spent + prompt - 60)).status_code == 200


async def test_a_gateway_killed_mid_stream_holds_nothing_past_its_lease(
    fleet: Fleet, log_dir: Path, tmp_path: Path, engine_address: str
) -> None:
    prompt = await fleet.prompt_tokens()
    big = prompt + 600
    # The long stream's reservation and a short one do not fit together (by one token).
    await fleet.set_limits("lease", token_budget=big + prompt + 19)
    victim = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-budgets-victim",
        data_dir=str(tmp_path / "victim"),
        api_keys=f"lease:{KEYS['lease']},test-admin:{ADMIN_API_KEY}",
        metering_addr=f"{fleet.meterings[0].address}",
        limits_lease_seconds=str(LEASE_SECONDS),
    )
    body = {"model": MODEL, "messages": ASK, "max_tokens": 600, "stream": True, "ignore_eos": True}
    try:
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {KEYS['lease']}"}) as http:
            async with http.stream("POST", f"{victim.address}/v1/chat/completions", json=body) as reply:
                assert reply.status_code == 200
                lines = reply.aiter_lines()
                while '"content"' not in await anext(lines):
                    pass
                victim.signal(signal.SIGKILL)
        assert (await chat(fleet.url(0), "lease", 20)).status_code == 429
    finally:
        victim.stop()

    recorded_before: list[int] = []

    async def admitted() -> bool:
        recorded_before.append((await fleet.recorded("lease")).requests)
        return (await chat(fleet.url(1), "lease", 20)).status_code == 200

    await wait_for(admitted, 30, "the dead gateway's reservation to stop counting")
    # Admitted while the dead gateway's event had not come (the engine hands its usage to another gateway
    # only after its caller lease, 10 s): the reservation stopped counting because its lease ran out.
    assert recorded_before[-1] == 0


async def test_limits_set_at_run_time_apply_to_the_next_request_and_the_sdk_reads_them(fleet: Fleet) -> None:
    assert (await chat(fleet.url(0), "later", 2)).status_code == 200
    await fleet.set_limits("later", gateway=0, everywhere=False, requests_per_minute=0)
    assert (await chat(fleet.url(0), "later", 2)).status_code == 429

    async def everywhere() -> bool:
        replies = await asyncio.gather(*(chat(fleet.url(i), "later", 2) for i in range(3)))
        return all(r.status_code == 429 for r in replies)

    # The other replicas learn which keys are limited within their poll (1 s).
    await wait_for(everywhere, 5, "every replica to refuse")
    await fleet.set_limits("later", gateway=1, everywhere=False)
    assert (await chat(fleet.url(1), "later", 2)).status_code == 200

    # The openai SDK: a spent budget is not retried (x-should-retry: false) and raises its RateLimitError.
    await fleet.set_limits("sdk", token_budget=10)
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    client = openai.OpenAI(base_url=f"{fleet.url(2)}/v1", api_key=KEYS["sdk"], max_retries=3, http_client=http)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
    assert len(sent) == 1 and refused.value.body["type"] == "insufficient_quota"


async def test_a_key_reads_its_own_standing_and_only_an_admin_another_keys(fleet: Fleet) -> None:
    own = {"Authorization": f"Bearer {KEYS['rpm']}"}
    async with httpx.AsyncClient(timeout=30) as http:
        mine = (await http.get(f"{fleet.url(0)}/v1/limits", headers=own)).json()
        assert mine["limits"]["requests_per_minute"] == 5 and mine["remaining"]["budget"] is None
        assert (await http.get(f"{fleet.url(0)}/v1/limits/budget", headers=own)).status_code == 403
        assert (await http.put(f"{fleet.url(0)}/v1/limits/rpm", json={}, headers=own)).status_code == 403
        assert (await http.get(f"{fleet.url(0)}/v1/limits/rpm", headers=ADMIN)).json()["api_key_id"] == "rpm"
        bad = await http.put(f"{fleet.url(0)}/v1/limits/rpm", json={"token_budget": -1}, headers=ADMIN)
        assert bad.status_code == 400


async def test_a_spent_budget_is_refused_before_the_prompt_is_tokenized_and_retry_after_only_where_it_resets(
    fleet: Fleet,
) -> None:
    """Before: a spent key still had the engine tokenize each prompt before its 429 (seconds of engine CPU
    for a large one), and a total budget, which never starts over, said `retry-after: 1`."""
    await fleet.set_limits("spent", token_budget=0)
    # A prompt the engine would refuse (400) once tokenized: a 429 shows it never got that far.
    too_long = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 700_000}], "max_tokens": 1}
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {KEYS['spent']}"}) as http:
        refused = await http.post(f"{fleet.url(0)}/v1/chat/completions", json=too_long)
    assert refused.status_code == 429, refused.text[:300]
    assert refused.json()["error"]["type"] == "insufficient_quota"
    assert "retry-after" not in refused.headers and refused.headers["x-should-retry"] == "false"

    await fleet.set_limits("daily", token_budget=0, budget_period="day")
    daily = await chat(fleet.url(1), "daily", 2)
    assert daily.status_code == 429
    assert 0 < int(daily.headers["retry-after"]) <= 86400


async def test_a_gateway_started_while_metering_is_down_refuses_until_it_knows_the_limits(
    log_dir: Path, tmp_path: Path, engine_address: str
) -> None:
    """Before: it knew no limited keys, so a spent key got 200 there despite LIMITS_FAIL_OPEN=false."""
    port = free_port()
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-limits-closed",
        data_dir=str(tmp_path / "g"),
        api_keys=f"spent:{KEYS['spent']},test-admin:{ADMIN_API_KEY}",
        metering_addr=f"127.0.0.1:{port}",
    )
    try:
        refused = await chat(gateway.address, "spent", 2)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "limits_unavailable"
        metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", port, "metering-limits-closed")
        try:

            async def served() -> bool:
                return (await chat(gateway.address, "spent", 2)).status_code == 200

            # This metering holds no limits for the key: once the gateway has read that, it serves.
            await wait_for(served, 60, "the gateway to read the limits and serve")
        finally:
            metering.stop()
    finally:
        gateway.stop()
