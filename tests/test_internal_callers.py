"""Internal gRPC callers as users: their own credentials (added, rotated and removed while the servers
run), a role that may generate but not do the gateway's bookkeeping, and every token they generate
metered under their name, durably: the engine's totals equal metering's for a mix of gateway traffic and
direct callers with cancellations, and a direct stream that ended is metered even when the engine is
SIGKILLed before metering could take it."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.metering.v1 import metering_pb2 as mpb

from services.contracts.builtin_models import TINY_NAME
from services.contracts.engine_client import EngineClient
from services.contracts.metering_client import MeteringClient
from services.service_auth.provision import add_caller, remove_caller, rotate_caller
from tests.credentials import DIRECTORY, metering_client
from tests.stack import (
    API_KEY,
    metering_totals,
    start_gateway,
    start_metering,
    start_tiny_engine,
    wait_for,
)
from tools.processes import free_port

CALLER = "batch-job"


@pytest.fixture
def caller_token() -> Iterator[str]:
    token = add_caller(DIRECTORY, CALLER, ["generate"])
    yield token
    try:
        remove_caller(DIRECTORY, CALLER)
    except ValueError:
        pass


def direct(max_tokens: int, caller: str = "") -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=f"direct-{uuid.uuid4().hex[:8]}",
        model=TINY_NAME,
        text="Once upon a time",
        caller=caller,
        sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )


async def stream_direct(
    address: str,
    token: str,
    max_tokens: int,
    cut_after: int | None = None,
    caller: str = "",
    multiplexed: bool = False,
) -> pb.Usage | None:
    """A direct Generate (or one on a GenerateMany stream); its final usage, or None when it was cut
    (cancelled) after `cut_after` messages."""
    async with EngineClient(address, token, multiplexed) as engine:
        call = engine.generate(direct(max_tokens, caller), timeout=120)
        seen = 0
        async for message in call:
            seen += 1
            if cut_after is not None and seen >= cut_after:
                call.cancel()
                return None
            if message.finished:
                return message.usage
    return None


async def served(address: str) -> tuple[int, int]:
    async with EngineClient(address, (DIRECTORY / "admin.token").read_text().strip()) as engine:
        load = await engine.load()
        return load.prompt_tokens, load.completion_tokens


async def caller_totals(address: str) -> tuple[int, int]:
    async with metering_client(address) as client:
        rows = await client.totals(mpb.GetTotalsRequest(caller=CALLER))
    return sum(r.totals.prompt_tokens for r in rows), sum(r.totals.completion_tokens for r in rows)


async def test_callers_are_managed_like_keys_and_every_token_they_generate_is_metered(
    log_dir: Path, tmp_path: Path, caller_token: str
) -> None:
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-callers")
    port = free_port()
    engine = await asyncio.to_thread(
        start_tiny_engine, log_dir, port, metering.address, tmp_path / "e", "engine-callers"
    )
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine.address,
        "gateway-callers",
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g"),
    )
    try:
        # The caller's role: generate, tokenize, list; not the gateway's bookkeeping, not the load, not metering.
        async with EngineClient(engine.address, caller_token) as own:
            assert [m.id for m in await own.list_models()] == [TINY_NAME]
            assert (await own.tokenize(pb.TokenizeRequest(model=TINY_NAME, text="hi"))).count > 0
            for refused in (own.confirm_usage(["x"]), own.claim_usage("gw", ""), own.load()):
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await refused
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with MeteringClient(metering.address, caller_token) as as_metering:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await as_metering.record([mpb.UsageEvent(event_id="x", source="x", model="x")])
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # On a GenerateMany stream too, every token a direct caller generates is metered under its name.
        alone = await stream_direct(engine.address, caller_token, 12, multiplexed=True)
        assert alone is not None and alone.completion_tokens == 12

        async def metered_as_the_caller() -> bool:
            return await caller_totals(metering.address) == (alone.prompt_tokens, alone.completion_tokens)

        await wait_for(metered_as_the_caller, 30, "metering to hold the GenerateMany stream under the caller's name")

        # A mix: gateway streams and direct callers, some cut short, some claiming to bill their own.
        body = {
            "model": TINY_NAME,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 40,
            "ignore_eos": True,
            "stream": True,
        }

        async def through_gateway(hang_up: float | None) -> None:
            async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
                try:
                    await asyncio.wait_for(http.post(f"{gateway.address}/v1/chat/completions", json=body), hang_up)
                except TimeoutError:
                    pass

        await asyncio.gather(
            *(through_gateway(h) for h in (None, None, 0.3, None)),
            *(stream_direct(engine.address, caller_token, 40, cut) for cut in (None, None, 3, 8)),
            *(stream_direct(engine.address, caller_token, 40, cut, multiplexed=True) for cut in (None, 5)),
            stream_direct(engine.address, caller_token, 20, caller="someone-else/1"),
        )

        async def agree() -> bool:
            totals = await metering_totals(metering.address)
            return (totals.prompt_tokens, totals.completion_tokens) == await served(engine.address)

        await wait_for(agree, 30, "metering's totals to equal the engine's")
        before = await caller_totals(metering.address)
        assert before[1] > 0, "the direct caller's tokens are metered under its name"

        # A direct stream ends while metering is stalled, then the engine is killed: the event was durable.
        metering.signal(signal.SIGSTOP)
        try:
            final = await stream_direct(engine.address, caller_token, 16)
            engine.proc.send_signal(signal.SIGKILL)
            engine.stop()
        finally:
            metering.signal(signal.SIGCONT)
        assert final is not None and final.completion_tokens == 16
        engine = await asyncio.to_thread(
            start_tiny_engine, log_dir, port, metering.address, tmp_path / "e", "engine-callers-2"
        )

        async def delivered() -> bool:
            got = await caller_totals(metering.address)
            return got == (before[0] + final.prompt_tokens, before[1] + final.completion_tokens)

        await wait_for(delivered, 60, "the killed engine's outbox to reach metering after its restart")

        # Rotation without a grace period, then removal: the servers read the callers file again.
        new_token = rotate_caller(DIRECTORY, CALLER, 0)

        async def refused(token: str) -> bool:
            try:
                await stream_direct(engine.address, token, 1)
            except grpc.aio.AioRpcError as error:
                return error.code() == grpc.StatusCode.UNAUTHENTICATED
            return False

        await wait_for(lambda: refused(caller_token), 10, "the old token to be refused")
        assert (await stream_direct(engine.address, new_token, 1)) is not None
        remove_caller(DIRECTORY, CALLER)
        await wait_for(lambda: refused(new_token), 10, "the removed caller to be refused")
    finally:
        gateway.stop()
        engine.stop()
        metering.stop()
