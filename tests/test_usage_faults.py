"""Usage under faults, with the real engine, gateway and metering processes: clients that hang up at any
moment, a gateway killed with SIGKILL mid-stream while metering is stalled, SIGTERM with streams in
flight, and model names the engine does not serve. The assertion each time: the engine's own totals,
metering's totals and what the clients saw (plus the partial usage of aborted requests) agree exactly."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import sqlite3
from pathlib import Path

import httpx
from llmserve.metering.v1 import metering_pb2 as mpb

from services.contracts.builtin_models import TINY_NAME
from tests.calls import CANCELLER, FINISHER, KEYS, stream_chat
from tests.credentials import engine_client, metering_client
from tests.stack import (
    ADMIN_HEADERS,
    MODEL,
    engine_baseline,
    engine_served,
    metering_reaches_engine,
    metering_totals,
    start_gateway,
    start_metering,
    start_tiny_engine,
    totals_by_key,
    wait_for,
    wait_idle,
)
from tools.processes import free_port


async def test_clients_hanging_up_at_random_moments_agree_exactly(
    log_dir: Path, tmp_path: Path, engine_address: str
) -> None:
    """240 hang-ups from 5 ms to 1.5 s after sending (many before the first token) among 40 finished streams."""
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-hangups")
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-hangups",
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g"),
        api_keys=KEYS,
    )
    rng = random.Random(7)
    try:
        before = await engine_baseline(engine_address, metering.address)
        slots = asyncio.Semaphore(12)

        async def one(i: int) -> tuple[str, tuple[int, int] | None]:
            async with slots:
                if i % 7 == 0:
                    return "finisher", await stream_chat(gateway.address, FINISHER, 8)
                return "canceller", await stream_chat(gateway.address, CANCELLER, 64, rng.uniform(0.005, 1.5))

        results = await asyncio.gather(*(one(i) for i in range(280)))
        finished = [u for who, u in results if who == "finisher"]
        hung_up = [u for who, u in results if who == "canceller" and u is None]
        assert len(finished) == 40 and all(finished)
        assert len(hung_up) >= 200
        await metering_reaches_engine(metering.address, engine_address, before, 60)
        by_key = await totals_by_key(metering.address)
        # What the finishing clients saw is exactly what metering holds for their key.
        assert (by_key["finisher"].prompt_tokens, by_key["finisher"].completion_tokens) == tuple(
            map(sum, zip(*finished))
        )
        assert by_key["finisher"].ok_requests == 40
        # Every hang-up that reached the model is one aborted event with its partial usage.
        assert by_key["canceller"].aborted_requests + by_key["canceller"].ok_requests <= 240
        assert by_key["canceller"].aborted_requests >= 150
        assert by_key["canceller"].completion_tokens < 240 * 64
    finally:
        gateway.stop()
        metering.stop()


async def test_gateway_killed_mid_stream_with_metering_stalled_loses_nothing(
    log_dir: Path, tmp_path: Path, engine_address: str
) -> None:
    """SIGKILL of the gateway at random moments under streaming load while metering is frozen
    (SIGSTOP); the gateway restarts on the same data folder; metering thaws."""
    port = free_port()
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", port, "metering-sigkill")
    settings = dict(metering_addr=metering.address, data_dir=str(tmp_path / "g"), api_keys=KEYS)
    gateway = await asyncio.to_thread(start_gateway, log_dir, engine_address, "gateway-sigkill", **settings)
    rng = random.Random(11)
    seen: list[tuple[int, int]] = []
    try:
        before = await engine_baseline(engine_address, metering.address)
        for round_ in range(3):
            load = [
                asyncio.create_task(stream_chat(gateway.address, FINISHER, rng.choice([4, 12, 40]))) for _ in range(10)
            ]
            await asyncio.sleep(rng.uniform(0.3, 2.5))
            metering.signal(signal.SIGSTOP)
            gateway.signal(signal.SIGKILL)
            seen += [u for u in await asyncio.gather(*load) if u is not None]
            gateway.stop()
            gateway = await asyncio.to_thread(
                start_gateway, log_dir, engine_address, f"gateway-sigkill-{round_ + 2}", **settings
            )
            metering.signal(signal.SIGCONT)
        seen += [u for u in await asyncio.gather(*(stream_chat(gateway.address, FINISHER, 4) for _ in range(3))) if u]
        await metering_reaches_engine(metering.address, engine_address, before, 90)
        totals = await metering_totals(metering.address)
        # Every stream a client saw to its usage chunk is in metering, and the cut ones on top of it.
        assert totals.ok_requests >= len(seen)
        assert totals.completion_tokens >= sum(c for _, c in seen)
        async with engine_client(engine_address) as engine:
            assert (await engine.load()).open_streams == 0
    finally:
        metering.signal(signal.SIGCONT)
        gateway.stop()
        metering.stop()


async def test_a_gateway_replaced_for_good_loses_no_usage(log_dir: Path, tmp_path: Path, engine_address: str) -> None:
    """The issue's replica case: metering stalled, 12 streams answered with their usage chunk, the gateway
    SIGKILLed and its data folder deleted (a pod replaced: new volume, new identity), a new gateway
    started, metering thawed. Before: 0 of 12 metered (the engine had released the usage once the lost
    outbox had it, and only the same source could claim). Now the engine holds it until metering
    acknowledged it, and once the dead gateway's lease ran out the new one claims it."""
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-replaced")
    first = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-replaced-1",
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g1"),
        api_keys=KEYS,
    )
    second = None
    try:
        before = await engine_baseline(engine_address, metering.address)
        metering.signal(signal.SIGSTOP)
        seen = await asyncio.gather(*(stream_chat(first.address, FINISHER, 6) for _ in range(12)))
        assert all(u is not None for u in seen)
        first.signal(signal.SIGKILL)
        first.stop()
        shutil.rmtree(tmp_path / "g1")
        second = await asyncio.to_thread(
            start_gateway,
            log_dir,
            engine_address,
            "gateway-replaced-2",
            metering_addr=metering.address,
            data_dir=str(tmp_path / "g2"),
            api_keys=KEYS,
        )
        metering.signal(signal.SIGCONT)
        await metering_reaches_engine(metering.address, engine_address, before, 90)
        totals = await metering_totals(metering.address)
        assert totals.requests == 12 and totals.completion_tokens == sum(c for _, c in seen)
    finally:
        metering.signal(signal.SIGCONT)
        first.stop()
        if second is not None:
            second.stop()
        metering.stop()


async def test_a_gateway_lost_then_the_engine_restarted_before_any_claim_loses_nothing(
    log_dir: Path, tmp_path: Path
) -> None:
    """The order of failure the engine's memory alone could not survive: metering stalled, 6 streams
    answered, the gateway SIGKILLed for good, then the engine SIGKILLed and restarted before any gateway
    claimed. The engine's journal brings the held usage back; a new gateway claims it; metering thaws
    and holds exactly what the clients saw."""
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-held")
    port, engine_data = free_port(), tmp_path / "engine"
    engine = await asyncio.to_thread(start_tiny_engine, log_dir, port, metering.address, engine_data, "engine-held-1")
    settings = dict(metering_addr=metering.address, api_keys=KEYS)
    first = await asyncio.to_thread(
        start_gateway, log_dir, engine.address, "gateway-held-1", data_dir=str(tmp_path / "g1"), **settings
    )
    second = None
    try:
        metering.signal(signal.SIGSTOP)
        seen = await asyncio.gather(*(stream_chat(first.address, FINISHER, 5, model=TINY_NAME) for _ in range(6)))
        assert all(u is not None for u in seen)
        first.signal(signal.SIGKILL)
        first.stop()
        shutil.rmtree(tmp_path / "g1")

        async def journaled() -> bool:
            with sqlite3.connect(engine_data / "held_usage.sqlite3") as db:
                return db.execute("SELECT COUNT(*) FROM held").fetchone()[0] == 6

        await wait_for(journaled, 10, "the engine to write the held usage to disk")
        engine.signal(signal.SIGKILL)
        engine.stop()
        engine = await asyncio.to_thread(
            start_tiny_engine, log_dir, port, metering.address, engine_data, "engine-held-2"
        )
        second = await asyncio.to_thread(
            start_gateway, log_dir, engine.address, "gateway-held-2", data_dir=str(tmp_path / "g2"), **settings
        )
        metering.signal(signal.SIGCONT)
        expected = (sum(p for p, _ in seen), sum(c for _, c in seen))

        async def metered() -> bool:
            totals = await metering_totals(metering.address)
            return (totals.prompt_tokens, totals.completion_tokens) == expected

        await wait_for(metered, 90, f"metering to hold the clients' {expected}")
        assert (await metering_totals(metering.address)).requests == 6
    finally:
        metering.signal(signal.SIGCONT)
        for process in (first, second, engine, metering):
            if process is not None:
                process.stop()


async def test_sigterm_ends_streams_with_usage_and_meters_them(
    log_dir: Path, tmp_path: Path, engine_address: str
) -> None:
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-sigterm")
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-sigterm",
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g"),
        shutdown_grace_seconds="1",
    )
    try:
        before = await engine_baseline(engine_address, metering.address)
        bodies: list[list[str]] = []

        async def long_stream() -> None:
            lines: list[str] = []
            bodies.append(lines)
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Tell a long story."}],
                "max_tokens": 1500,
                "stream": True,
                "ignore_eos": True,
            }
            async with httpx.AsyncClient(timeout=60, headers={"Authorization": "Bearer sk-test-secret-1"}) as http:
                async with http.stream("POST", f"{gateway.address}/v1/chat/completions", json=body) as reply:
                    async for line in reply.aiter_lines():
                        if line.startswith("data: "):
                            lines.append(line[6:])

        streams = [asyncio.create_task(long_stream()) for _ in range(3)]
        await wait_for(lambda: _all_started(bodies, 3), 60, "three streams to start")
        gateway.signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*streams), 60)
        # uvicorn re-raises the signal it caught once its shutdown is complete (exit status 143 in Docker).
        assert gateway.proc.wait(30) == -signal.SIGTERM
        assert "Application shutdown complete" in gateway.log_tail(10)
        for lines in bodies:
            assert lines[-1] == "[DONE]"
            assert "shutting down" in json.loads(lines[-2])["error"]["message"]
            usage = json.loads(lines[-3])["usage"]
            assert usage["completion_tokens"] < 1500
        await wait_idle(engine_address)
        after = await engine_served(engine_address)
        totals = await metering_totals(metering.address)
        assert (totals.prompt_tokens, totals.completion_tokens) == (after[0] - before[0], after[1] - before[1])
        assert totals.aborted_requests == 3
    finally:
        gateway.stop()
        metering.stop()


async def _all_started(bodies: list[list[str]], count: int) -> bool:
    return len(bodies) == count and all(len(lines) >= 3 for lines in bodies)


async def test_model_names_the_engine_does_not_serve(log_dir: Path, tmp_path: Path, engine_address: str) -> None:
    """An empty model is billed under the engine's model; an unknown one is a 404 that leaves no
    metering row and no Prometheus series behind."""
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-models")
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-models",
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g"),
        api_keys=KEYS,
    )
    try:
        headers = {"Authorization": f"Bearer {FINISHER}"}
        async with httpx.AsyncClient(timeout=60, headers=headers) as http:
            empty = await http.post(
                f"{gateway.address}/v1/chat/completions",
                json={"model": "", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
            )
            assert empty.status_code == 200 and empty.json()["model"] == MODEL
            for name in ("nope", "nope-2", "x" * 300):
                unknown = await http.post(
                    f"{gateway.address}/v1/chat/completions",
                    json={"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
                )
                assert unknown.status_code == 404
                assert unknown.json()["error"]["code"] == "model_not_found"

        async def recorded() -> bool:
            return (await metering_totals(metering.address)).requests >= 1

        async def delivered() -> bool:
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{gateway.address}/health")).json()
            # Nothing of this was refused by metering (dead letters would be listed here).
            return health["usage"]["pending"] == 0 and health["usage"]["dead_letters"] == 0

        await wait_for(recorded, 30, "the empty-model request's event")
        # Everything the gateway recorded has reached metering: the rows below are all there will be.
        await wait_for(delivered, 30, "the gateway's outbox to empty")
        async with metering_client(metering.address) as client:
            rows = await client.totals(mpb.GetTotalsRequest(group_by_model=True))
        assert [(r.model, r.totals.requests) for r in rows] == [(MODEL, 1)]
        async with httpx.AsyncClient() as http:
            exposition = (await http.get(metering.metrics_url)).text + (
                await http.get(f"{gateway.address}/metrics", headers=ADMIN_HEADERS)
            ).text
        assert "nope" not in exposition
    finally:
        gateway.stop()
        metering.stop()
