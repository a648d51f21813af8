"""GATEWAY_WORKERS=2: two gateway processes accept on one port, each with its own outbox and identity, the
metrics summed whichever worker answers, a killed worker started again on its own outbox, and every
token metered exactly."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import psutil

from tests.stack import (
    ADMIN_HEADERS,
    API_KEY,
    metering_totals,
    metric,
    start_gateway,
    start_metering,
    wait_for,
)

MODEL = "SmolLM2-135M-Instruct"


def workers_of(supervisor: psutil.Process) -> list[psutil.Process]:
    return [c for c in supervisor.children() if "services.gateway" in " ".join(c.cmdline())]


async def stream(url: str, max_tokens: int) -> tuple[int, int]:
    """One streamed chat on a connection of its own; (prompt, completion) tokens of its usage chunk."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count to fifty."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            usage = None
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"usage":{' in line:
                    usage = json.loads(line[6:])["usage"]
    assert usage is not None
    return usage["prompt_tokens"], usage["completion_tokens"]


async def scrape_fresh(url: str) -> str:
    async with httpx.AsyncClient(headers=ADMIN_HEADERS) as http:
        return (await http.get(f"{url}/metrics")).text


def listening(worker: psutil.Process, port: int) -> bool:
    try:
        return any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in worker.net_connections())
    except psutil.NoSuchProcess:
        return False


async def test_two_workers_on_one_port(log_dir: Path, tmp_path: Path, engine_address: str) -> None:
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-workers")
    data = tmp_path / "g"
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-workers",
        metering_addr=metering.address,
        data_dir=str(data),
        workers="2",
    )
    try:
        supervisor = psutil.Process(gateway.proc.pid)
        deadline = time.monotonic() + 60
        while len(workers_of(supervisor)) < 2 or not all((data / "workers" / s / "instance-id").exists() for s in "01"):
            assert time.monotonic() < deadline, "two workers, each with its own identity"
            await asyncio.sleep(0.2)
        identities = {s: (data / "workers" / s / "instance-id").read_text() for s in "01"}
        assert len(set(identities.values())) == 2

        # Twelve streams at once, each on its own connection: both workers take some.
        port = int(gateway.address.rsplit(":", 1)[1])
        served_by: set[int] = set()
        streams = asyncio.gather(*(stream(gateway.address, 40) for _ in range(12)))
        while not streams.done():
            for worker in workers_of(supervisor):
                if any(c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in worker.net_connections()):
                    served_by.add(worker.pid)
            await asyncio.sleep(0.05)
        usages = await streams
        assert len(served_by) == 2, "both workers accepted connections on the shared port"

        async def metered(expected: list[tuple[int, int]]) -> bool:
            totals = await metering_totals(metering.address)
            return (totals.prompt_tokens, totals.completion_tokens) == tuple(map(sum, zip(*expected)))

        await wait_for(lambda: metered(usages), 30, "metering to hold exactly what the clients saw")
        # Whichever worker answers a scrape, the metrics are both workers' summed.
        for _ in range(4):
            text = await scrape_fresh(gateway.address)
            assert metric(text, "gateway_requests_total", endpoint="/v1/chat/completions", status="200") == 12
            assert metric(text, "gateway_completion_tokens_total") == sum(c for _, c in usages)

        # A worker killed is started again on its own outbox and identity; nothing is lost meanwhile.
        killed = next(w for w in workers_of(supervisor))
        killed.send_signal(signal.SIGKILL)
        during = await asyncio.gather(*(stream(gateway.address, 8) for _ in range(4)))
        deadline = time.monotonic() + 60
        # Serving once it listens: uvicorn binds after the app's start-up (engine poll, outbox) is done.
        while (
            len(workers_of(supervisor)) < 2
            or killed.pid in {w.pid for w in workers_of(supervisor)}
            or not all(listening(w, port) for w in workers_of(supervisor))
        ):
            assert time.monotonic() < deadline, "the killed worker started again and listens"
            await asyncio.sleep(0.2)
        after = await asyncio.gather(*(stream(gateway.address, 8) for _ in range(4)))
        assert {s: (data / "workers" / s / "instance-id").read_text() for s in "01"} == identities
        await wait_for(lambda: metered(usages + during + after), 30, "metering to hold every stream, exactly")
        text = await scrape_fresh(gateway.address)
        # The killed worker's counters stay in the sum (its files remain); only its live gauges are dropped.
        assert metric(text, "gateway_requests_total", endpoint="/v1/chat/completions", status="200") == 20

        gateway.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.proc.wait, 60) == 0
    finally:
        gateway.stop()
        metering.stop()
