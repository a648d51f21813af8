"""The metering service and usage delivery, with real processes over real ports."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from llmserve.metering.v1 import metering_pb2 as mpb

from tests.calls import event
from tests.credentials import DIRECTORY as CREDENTIALS
from tests.credentials import metering_client
from tests.stack import (
    ADMIN_HEADERS,
    API_KEY,
    MODEL,
    engine_served,
    metering_reaches_engine,
    metering_totals,
    start_gateway,
    start_metering,
    wait_for,
    wait_idle,
)
from tools.processes import ROOT, free_port, metering_env


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Metering's settings for each store: SQLite in its data folder, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    return {"METERING_DATABASE_URL": request.getfixturevalue("new_database")()}


async def test_same_event_sent_1000_times_counts_once(log_dir: Path, tmp_path: Path, store_env: dict[str, str]) -> None:
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path, None, "metering-dup", store_env)
    try:
        async with metering_client(metering.address) as client:
            same = event(1)
            acks = []
            for _ in range(10):
                rounds = await asyncio.gather(*(client.record([same]) for _ in range(100)))
                acks += [a.status for r in rounds for a in r]
            assert acks.count(mpb.ACK_STATUS_RECORDED) == 1
            assert acks.count(mpb.ACK_STATUS_DUPLICATE) == 999
            counters = await client.counters()
            assert counters.all.requests == 1 and counters.all.completion_tokens == same.completion_tokens
            assert counters.events_duplicated == 999
            assert (await client.record([event(1, source="other-gateway")]))[0].status == mpb.ACK_STATUS_RECORDED
    finally:
        metering.stop()


async def test_kill_9_after_acks_loses_nothing_and_counts_nothing_twice(
    log_dir: Path, tmp_path: Path, store_env: dict[str, str]
) -> None:
    port = free_port()
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path, port, "metering-kill", store_env)
    events = [event(i) for i in range(600)]
    async with metering_client(metering.address) as client:
        replies = await asyncio.gather(*(client.record(events[i : i + 50]) for i in range(0, 600, 50)))
        assert all(a.status == mpb.ACK_STATUS_RECORDED for r in replies for a in r)
        before = await client.counters()
    metering.signal(signal.SIGKILL)
    metering.stop()
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path, port, "metering-kill-2", store_env)
    try:
        async with metering_client(metering.address) as client:
            after = await client.counters()
            assert after == before
            assert after.all.requests == 600
            assert after.all.completion_tokens == sum(e.completion_tokens for e in events)
            again = await client.record(events[:100])
            assert {a.status for a in again} == {mpb.ACK_STATUS_DUPLICATE}
            rows = await client.totals(mpb.GetTotalsRequest(group_by_model=True, group_by_api_key=True))
            assert [(r.model, r.api_key_id, r.totals.requests) for r in rows] == [("m1", "team-a", 600)]
    finally:
        metering.stop()


async def test_bad_events_are_invalid_argument_and_counted(
    log_dir: Path, tmp_path: Path, store_env: dict[str, str]
) -> None:
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path, None, "metering-bad", store_env)
    try:
        async with metering_client(metering.address) as client:
            old = event(1)
            old.occurred_at.FromSeconds(int(time.time()) - 30 * 24 * 3600)
            future = event(2)
            future.occurred_at.FromSeconds(int(time.time()) + 3600)
            bad = [old, future, event(3, prompt_tokens=-5), event(4, model=""), event(5, status=0)]
            for e in bad:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await client.record([e])
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            mixed = await client.record([event(6), event(7, completion_tokens=-1)])
            assert [a.status for a in mixed] == [mpb.ACK_STATUS_RECORDED, mpb.ACK_STATUS_REJECTED]
            counters = await client.counters()
            assert counters.events_rejected == 6 and counters.all.requests == 1
        async with httpx.AsyncClient() as http:
            text = (await http.get(metering.metrics_url)).text
        assert 'metering_events_rejected_total{reason="negative"} 2.0' in text
        promtool = shutil.which("promtool")
        assert promtool, "promtool is missing: `make test` installs it (Debian's prometheus package)"
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        metering.stop()


async def test_report_command_prints_totals(log_dir: Path, tmp_path: Path, store_env: dict[str, str]) -> None:
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path, None, "metering-report", store_env)
    try:
        async with metering_client(metering.address) as client:
            await client.record([event(1), event(2, api_key_id="team-b"), event(3, prompt_tokens=-1)])
            await client.set_limits(
                mpb.KeyLimits(api_key_id="team-a", token_budget=1000, budget_period=mpb.BUDGET_PERIOD_DAY)
            )
        command = [sys.executable, "-m", "services.metering", "report", "--addr", metering.address, "--from", "1h"]

        def run(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([*command, *extra], cwd=ROOT, capture_output=True, text=True, timeout=60)

        result = await asyncio.to_thread(run, "--token-file", str(CREDENTIALS / "admin.token"))
        assert result.returncode == 0, result.stderr
        assert "team-a" in result.stdout and "team-b" in result.stdout
        lines = result.stdout.strip().splitlines()
        assert next(line for line in lines if line.startswith("total")).split()[1] == "2"
        # What was never billed is in the report too.
        assert "events refused (never billed): 1 (negative 1)" in lines
        assert "reservations settled without their event: 0 (0 tokens)" in lines
        # The limited key's standing: its budget, the day period, what it used (its one event) and what remains.
        team_a = event(1)
        used = team_a.prompt_tokens + team_a.completion_tokens
        assert lines[-1].split() == [
            "team-a",
            "-",
            "1",
            "-",
            str(used),
            "1000",
            "day",
            str(used),
            "0",
            str(1000 - used),
        ]
        # The gateway's credential may record usage but not read it back.
        refused = await asyncio.to_thread(run, "--token-file", str(CREDENTIALS / "gateway.token"))
        assert refused.returncode != 0 and "PERMISSION_DENIED" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        metering.stop()


# Delivery from the gateway: real engine, gateway and metering.


async def chat(gateway: str, n_tokens: int, cancel_after: int | None = None) -> tuple[int, int] | None:
    """One streamed request; returns the usage the client saw (prompt, completion), or None if it hung up."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Say something {uuid.uuid4().hex[:4]}"}],
        "max_tokens": n_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.stream("POST", f"{gateway}/v1/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            chunks = 0
            usage = None
            async for line in reply.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunks += 1
                if cancel_after is not None and chunks > cancel_after:
                    return None
                if '"usage":{' in line:
                    u = json.loads(line[6:])["usage"]
                    usage = (u["prompt_tokens"], u["completion_tokens"])
            return usage


async def spool_depth(gateway: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{gateway}/metrics", headers=ADMIN_HEADERS)).text
    line = next(line for line in text.splitlines() if line.startswith("gateway_usage_spool_depth "))
    return float(line.split()[1])


async def test_delivery_survives_metering_and_gateway_restarts_exactly_once(
    log_dir: Path, tmp_path: Path, engine_address: str
) -> None:
    port = free_port()
    data = tmp_path / "metering"
    gateway_data = tmp_path / "gateway"
    metering = await asyncio.to_thread(start_metering, log_dir, data, port, "metering-deliver")
    settings = dict(metering_addr=metering.address, data_dir=str(gateway_data), usage_drain_seconds="1")
    gateway = await asyncio.to_thread(start_gateway, log_dir, engine_address, "gateway-deliver", **settings)
    engine_before = await engine_served(engine_address)
    seen: list[tuple[int, int]] = []
    try:
        seen += [u for u in await asyncio.gather(*(chat(gateway.address, 4) for _ in range(3))) if u]
        # Metering goes down during traffic: usage spools to the gateway's disk.
        metering.stop()
        seen += [u for u in await asyncio.gather(*(chat(gateway.address, 4) for _ in range(3))) if u]
        await wait_for(lambda: _positive(spool_depth(gateway.address)), 30, "events to spool")
        # The gateway restarts with events still spooled.
        gateway.stop()
        gateway = await asyncio.to_thread(start_gateway, log_dir, engine_address, "gateway-deliver-2", **settings)
        seen += [u for u in await asyncio.gather(*(chat(gateway.address, 4) for _ in range(2))) if u]
        metering = await asyncio.to_thread(start_metering, log_dir, data, port, "metering-deliver-2")
        await wait_for(lambda: _zero(spool_depth(gateway.address)), 60, "the outbox to drain")
        totals = await metering_totals(metering.address)
        assert len(seen) == 8
        assert totals.requests == 8
        assert (totals.prompt_tokens, totals.completion_tokens) == tuple(map(sum, zip(*seen)))
        engine_after = await engine_served(engine_address)
        assert totals.completion_tokens == engine_after[1] - engine_before[1]
        assert totals.prompt_tokens == engine_after[0] - engine_before[0]
    finally:
        gateway.stop()
        metering.stop()


async def test_metering_killed_mid_traffic_gets_every_request_exactly_once(
    log_dir: Path, tmp_path: Path, engine_address: str
) -> None:
    """kill -9 while requests stream and usage batches are in flight; traffic goes on; metering comes back."""
    port = free_port()
    data = tmp_path / "metering"
    metering = await asyncio.to_thread(start_metering, log_dir, data, port, "metering-midtraffic")
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-midtraffic",
        metering_addr=metering.address,
        data_dir=str(tmp_path / "gateway"),
    )
    total, in_parallel = 24, 4
    done: list[tuple[int, int] | None] = []

    async def traffic() -> None:
        slots = asyncio.Semaphore(in_parallel)

        async def one() -> None:
            async with slots:
                done.append(await chat(gateway.address, 6))

        await asyncio.gather(*(one() for _ in range(total)))

    async def finished(count: int) -> bool:
        return len(done) >= count

    try:
        await wait_idle(engine_address)
        engine_before = await engine_served(engine_address)
        running = asyncio.create_task(traffic())
        await wait_for(lambda: finished(6), 120, "6 requests")
        metering.signal(signal.SIGKILL)
        metering.stop()
        await wait_for(lambda: finished(14), 120, "14 requests")
        metering = await asyncio.to_thread(start_metering, log_dir, data, port, "metering-midtraffic-2")
        await asyncio.wait_for(running, 180)
        await wait_idle(engine_address)
        engine_after = await engine_served(engine_address)

        async def all_recorded() -> bool:
            return (await metering_totals(metering.address)).requests >= total and await _zero(
                spool_depth(gateway.address)
            )

        await wait_for(all_recorded, 60, f"{total} usage events")
        totals = await metering_totals(metering.address)
        seen = [u for u in done if u is not None]
        assert len(seen) == total
        assert totals.requests == total and totals.ok_requests == total
        assert (totals.prompt_tokens, totals.completion_tokens) == tuple(map(sum, zip(*seen)))
        assert totals.completion_tokens == engine_after[1] - engine_before[1]
        assert totals.prompt_tokens == engine_after[0] - engine_before[0]
    finally:
        gateway.stop()
        metering.stop()


async def _positive(value) -> bool:
    return (await value) > 0


async def _zero(value) -> bool:
    return (await value) == 0


async def test_concurrent_load_with_cancellations_agrees_exactly(
    log_dir: Path, tmp_path: Path, engine_address: str
) -> None:
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-load")
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-load",
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g"),
    )
    try:
        await wait_idle(engine_address)
        engine_before = await engine_served(engine_address)
        # A cancelled stream asks for far more tokens than it reads, so it is still generating when it hangs up.
        results = await asyncio.gather(
            *(
                chat(gateway.address, 400, cancel_after=3) if i % 4 == 0 else chat(gateway.address, 12)
                for i in range(16)
            )
        )
        await wait_idle(engine_address)
        engine_after = await engine_served(engine_address)

        async def all_recorded() -> bool:
            return (await metering_totals(metering.address)).requests == 16

        await wait_for(all_recorded, 60, "16 usage events")
        totals = await metering_totals(metering.address)
        completed = [u for u in results if u is not None]
        assert len(completed) == 12
        assert totals.aborted_requests == 4 and totals.ok_requests == 12
        assert totals.completion_tokens == engine_after[1] - engine_before[1]
        assert totals.prompt_tokens == engine_after[0] - engine_before[0]
        # The completed streams' usage chunks account for all but the cancelled streams' tokens.
        assert sum(c for _, c in completed) == 12 * 12
        assert 12 * 12 < totals.completion_tokens < 12 * 12 + 4 * 400
    finally:
        gateway.stop()
        metering.stop()


async def test_a_request_of_many_prompts_and_choices_is_billed_to_the_token(
    log_dir: Path, tmp_path: Path, engine_address: str
) -> None:
    """64 prompts with n=3 (192 choices): the event once joined 192 finish reasons, metering refused it as
    too long, and everything the engine counted was billed to nobody."""
    meter = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-many")
    settings = dict(metering_addr=meter.address, data_dir=str(tmp_path / "g"))
    gw = await asyncio.to_thread(start_gateway, log_dir, engine_address, "gateway-many", **settings)
    try:
        await wait_idle(engine_address)
        before = await engine_served(engine_address)
        body = {"model": MODEL, "prompt": [f"Count to {i}." for i in range(64)], "n": 3, "max_tokens": 2}
        async with httpx.AsyncClient(timeout=300, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            reply = await http.post(f"{gw.address}/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        assert usage["completion_tokens"] > 0
        await metering_reaches_engine(meter.address, engine_address, before, 60)
        totals = await metering_totals(meter.address)
        assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (
            1,
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
    finally:
        gw.stop()
        meter.stop()


async def test_sums_equal_a_recount_after_a_randomized_run_with_kill_9(
    log_dir: Path, tmp_path: Path, store_env: dict[str, str]
) -> None:
    """Random batches (duplicates, refused events, reservations and settles of a limited key) while metering
    is SIGKILLed twice; every batch is retried until acknowledged. Then the rollups, the keys' running
    spend and the counters equal a recount from the events (`python -m services.metering reconcile`),
    and the totals read from them equal what was acknowledged."""
    import random

    rng = random.Random(31)
    port = free_port()
    data = tmp_path / "metering"
    metering = await asyncio.to_thread(start_metering, log_dir, data, port, "metering-recount", store_env)
    recorded: dict[str, mpb.UsageEvent] = {}
    sent: list[mpb.UsageEvent] = []

    async def until_acked(call):  # noqa: ANN001, ANN202 - a coroutine factory, retried
        for _ in range(300):
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("metering did not come back")

    restarts: list[asyncio.Task] = []

    async def traffic(client) -> None:  # noqa: ANN001
        nonlocal metering
        for round_ in range(40):
            if round_ in (8, 20):
                # Killed between two batches (and, as it restarts, while the next ones are being sent).
                if restarts:
                    metering = await restarts[-1]
                metering.signal(signal.SIGKILL)
                metering.stop()
                restarts.append(
                    asyncio.create_task(
                        asyncio.to_thread(start_metering, log_dir, data, port, f"metering-recount-{round_}", store_env)
                    )
                )
            batch = []
            for _ in range(rng.randint(1, 60)):
                if sent and rng.random() < 0.2:
                    batch.append(rng.choice(sent))
                    continue
                e = event(
                    len(sent),
                    source=rng.choice(["gw-a", "gw-b"]),
                    model=rng.choice(["m1", "m2"]),
                    api_key_id=rng.choice(["team-a", "team-b", ""]),
                    caller=rng.choice(["", "batch"]),
                    status=rng.choice([mpb.REQUEST_STATUS_OK, mpb.REQUEST_STATUS_ABORT]),
                    prompt_tokens=rng.randint(1, 300),
                )
                e.occurred_at.FromNanoseconds(time.time_ns() - rng.randint(0, 3 * 86400) * 10**9)
                sent.append(e)
                batch.append(e)
            refused = event(10**6 + round_, prompt_tokens=-1) if round_ % 3 == 0 else None
            for e in batch[:2]:
                if e.api_key_id == "team-a":
                    ask = mpb.ReserveRequest(
                        source=e.source, event_id=e.event_id, api_key_id="team-a", tokens=500, lease_seconds=30
                    )
                    await until_acked(lambda ask=ask: client.reserve(ask))
                    tokens = e.prompt_tokens + e.completion_tokens
                    await until_acked(lambda e=e, tokens=tokens: client.settle(e.source, e.event_id, tokens))
            whole = batch + ([refused] if refused else [])
            acks = await until_acked(lambda whole=whole: client.record(whole))
            for e, ack in zip(batch, acks):
                assert ack.status in (mpb.ACK_STATUS_RECORDED, mpb.ACK_STATUS_DUPLICATE)
                recorded.setdefault(e.event_id, e)
            assert (acks[-1].status == mpb.ACK_STATUS_REJECTED) == (refused is not None)

    try:
        async with metering_client(metering.address) as client:
            await client.set_limits(mpb.KeyLimits(api_key_id="team-a", token_budget=10**9))
            running = asyncio.create_task(traffic(client))
            await asyncio.wait_for(running, 300)
            metering = await restarts[-1]
            rows = await client.totals(mpb.GetTotalsRequest(group_by_api_key=True))
            got = {r.api_key_id: (r.totals.requests, r.totals.prompt_tokens) for r in rows}
            want: dict[str, tuple[int, int]] = {}
            for e in recorded.values():
                requests, prompt = want.get(e.api_key_id, (0, 0))
                want[e.api_key_id] = (requests + 1, prompt + e.prompt_tokens)
            assert got == want
            standing = await client.standing("team-a")
            assert standing.budget_used == sum(
                e.prompt_tokens + e.completion_tokens for e in recorded.values() if e.api_key_id == "team-a"
            )
    finally:
        metering.stop()
    env = {**metering_env(free_port(), free_port(), data), **store_env}
    check = subprocess.run(
        [sys.executable, "-m", "services.metering", "reconcile", "--all"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "equal the events" in check.stdout
