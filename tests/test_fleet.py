"""Several engine processes behind one gateway: two replicas of the tiny model placed on two engines,
requests balanced across them, one engine killed (traffic goes on on the other, a request that picked
the dead one is retried before its first token), and the engine taken back into rotation when it
returns. The session's engine is one of the two; the other starts empty (ENGINE_START_MODEL=false)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from xinference_client import RESTfulClient

from services.contracts.builtin_models import TINY_NAME
from tests.credentials import engine_client
from tests.stack import ADMIN_API_KEY, API_KEY, start_engine, start_gateway, wait_for
from tools.processes import ServiceProcess, free_port

UID = "tiny-replicated"


@pytest.fixture(scope="module")
def second_engine_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def second_engine(log_dir: Path, second_engine_port: int) -> Iterator[ServiceProcess]:
    process = start_engine(log_dir, "engine-b", second_engine_port, env={"ENGINE_START_MODEL": "false"})
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def gateway(
    log_dir: Path, engine_address: str, second_engine: ServiceProcess, tmp_path_factory
) -> Iterator[ServiceProcess]:
    process = start_gateway(
        log_dir,
        f"{engine_address},{second_engine.address}",
        name="gateway-fleet",
        data_dir=str(tmp_path_factory.mktemp("gateway-fleet")),
        engine_poll_seconds="0.5",
    )
    try:
        yield process
    finally:
        process.stop()


async def streams_served(address: str) -> int:
    async with engine_client(address) as client:
        return (await client.load()).finished_streams


async def chat_many(url: str, count: int) -> list[int]:
    body = {"model": UID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return [
            (await client.post("/v1/chat/completions", json=body, headers=headers)).status_code for _ in range(count)
        ]


async def test_replicas_balance_fail_over_and_rejoin(
    gateway: ServiceProcess,
    engine_address: str,
    second_engine: ServiceProcess,
    second_engine_port: int,
    log_dir: Path,
) -> None:
    xinference = RESTfulClient(gateway.address, api_key=ADMIN_API_KEY)
    await asyncio.to_thread(xinference.launch_model, TINY_NAME, model_uid=UID, replica=2)
    try:
        description = xinference.describe_model(UID)
        assert description["replica"] == 2
        assert set(description["address"].split(",")) == {engine_address, second_engine.address}

        before = [await streams_served(a) for a in (engine_address, second_engine.address)]
        assert await chat_many(gateway.address, 12) == [200] * 12
        after = [await streams_served(a) for a in (engine_address, second_engine.address)]
        served = [b - a for a, b in zip(before, after)]
        assert sum(served) == 12 and min(served) >= 3, served

        # The second engine's host dies, its vLLM processes with it.
        os.killpg(second_engine.proc.pid, signal.SIGKILL)
        assert await chat_many(gateway.address, 8) == [200] * 8

        async def out_of_rotation() -> bool:
            health = httpx.get(f"{gateway.address}/health").json()
            return health["engines"] == {"serving": 1, "configured": 2}

        await wait_for(out_of_rotation, 10, "the dead engine to leave rotation")
        assert xinference.describe_model(UID)["replica"] == 1
    finally:
        await asyncio.to_thread(xinference.terminate_model, UID)
    assert UID not in xinference.list_models()

    # The engine comes back (empty, as a restarted engine is): it rejoins the rotation.
    second_engine.stop()
    back = await asyncio.to_thread(
        start_engine, log_dir, "engine-b-again", second_engine_port, env={"ENGINE_START_MODEL": "false"}
    )
    try:

        async def rejoined() -> bool:
            health = httpx.get(f"{gateway.address}/health").json()
            return health["engines"] == {"serving": 2, "configured": 2}

        await wait_for(rejoined, 20, "the engine to rejoin")
    finally:
        back.stop()
