"""The usage sender against an in-process metering service (real ledger and store) that comes and goes."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from llmserve.metering.v1 import metering_pb2_grpc
from prometheus_client import CollectorRegistry

from services.gateway.generation import Outcome
from services.gateway.outbox import Outbox
from services.gateway.usage_events import usage_event
from services.gateway.usage_sender import SenderMetrics, UsageSender
from services.grpc_lifecycle import build_server
from services.metering.client import MeteringClient
from services.metering.ledger import Ledger
from services.metering.metrics import MeteringMetrics
from services.metering.servicer import STATUS_BY_ERROR, MeteringServicer
from services.metering.store import UsageStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_metering(port: int, db: Path):
    ledger = Ledger(UsageStore(db), MeteringMetrics(), 3600, 60)
    await ledger.start()
    server = build_server(
        f"127.0.0.1:{port}",
        lambda s: metering_pb2_grpc.add_MeteringServiceServicer_to_server(MeteringServicer(ledger), s),
        ["llmserve.metering.v1.MeteringService"],
        STATUS_BY_ERROR,
    )
    await server.server.start()
    return server, ledger


def outcome(i: int) -> Outcome:
    return Outcome(request_id=f"chatcmpl-{i}", endpoint="/v1/chat/completions", model="m", api_key_id="k",
                   streamed=True, prompt_tokens=3, completion_tokens=i, finish_reasons=["stop"])


async def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_spools_while_metering_is_down_and_delivers_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    registry = CollectorRegistry()
    sender = UsageSender(MeteringClient(f"127.0.0.1:{port}"), Outbox(tmp_path / "outbox.db"), SenderMetrics(registry),
                         queue_size=2, batch_size=4, send_timeout=1.0, max_backoff=0.3)
    await sender.start()
    for i in range(1, 21):
        sender.submit(usage_event(outcome(i), "gw-test"))
    await wait_for(lambda: registry.get_sample_value("gateway_usage_spool_depth") == 20)
    # Restart the sender with everything on disk: nothing is lost.
    await sender.stop(0.1)
    server, ledger = await start_metering(port, tmp_path / "usage.db")
    try:
        registry = CollectorRegistry()
        sender = UsageSender(MeteringClient(f"127.0.0.1:{port}"), Outbox(tmp_path / "outbox.db"), SenderMetrics(registry),
                             batch_size=4)
        await sender.start()
        sender.submit(usage_event(outcome(5), "gw-test"))  # a retry of a request already spooled
        await wait_for(lambda: sender.pending == 0 and ledger.counters.models.get("m") is not None
                       and ledger.counters.models["m"].totals.requests == 20)
        totals = ledger.counters.models["m"].totals
        assert totals.completion_tokens == sum(range(1, 21))
        await wait_for(lambda: registry.get_sample_value("gateway_usage_events_total", {"outcome": "duplicate"}) == 1)
        assert registry.get_sample_value("gateway_usage_events_total", {"outcome": "dropped"}) == 0
        await sender.stop(1.0)
    finally:
        await server.server.stop(None)
        await ledger.stop()
