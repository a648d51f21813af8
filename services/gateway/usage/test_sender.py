"""The usage sender against an in-process metering service (real ledger and store) that comes and goes,
refuses events, or is not a metering service at all; and an outbox that cannot be written."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import grpc
from llmserve.engine.v1 import engine_pb2_grpc
from llmserve.metering.v1 import metering_pb2_grpc
from prometheus_client import CollectorRegistry

from services.contracts.metering_client import MeteringClient
from services.gateway.outcome import Outcome
from services.gateway.usage.events import usage_event
from services.grpc_lifecycle import build_server
from services.metering.key_watch import KeyWatch
from services.metering.ledger import Ledger
from services.metering.metrics import MeteringMetrics
from services.metering.servicer import STATUS_BY_ERROR, MeteringServicer
from services.metering.sqlite_store import SqliteStore
from services.metering.store import Totals
from services.usage_outbox.outbox import Outbox
from services.usage_outbox.sender import SenderMetrics, UsageSender


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_metering(port: int, db: Path):
    ledger = Ledger(SqliteStore(db), MeteringMetrics(), 3600, 60)
    await ledger.start()
    server = build_server(
        f"127.0.0.1:{port}",
        lambda s: metering_pb2_grpc.add_MeteringServiceServicer_to_server(
            MeteringServicer(ledger, KeyWatch(ledger)), s
        ),
        ["llmserve.metering.v1.MeteringService"],
        STATUS_BY_ERROR,
    )
    await server.server.start()
    return server, ledger


def outcome(i: int) -> Outcome:
    return Outcome(
        request_id=f"chatcmpl-{i}",
        endpoint="/v1/chat/completions",
        model="m",
        api_key_id="k",
        streamed=True,
        prompt_tokens=3,
        completion_tokens=i,
        finish_reasons=["stop"],
    )


async def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def totals_of(ledger: Ledger) -> Totals | None:
    m = (await ledger.counters()).models.get("m")
    return m.totals if m else None


async def wait_metered(ledger: Ledger, requests: int, timeout: float = 20.0) -> Totals:
    """Waits until model m's committed totals hold `requests` requests; those totals."""
    deadline = time.monotonic() + timeout
    while (totals := await totals_of(ledger)) is None or totals.requests < requests:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    return totals


def sender_for(port: int, outbox: Path, registry: CollectorRegistry, **kwargs) -> UsageSender:
    kwargs.setdefault("batch_size", 4)
    return UsageSender(
        MeteringClient(f"127.0.0.1:{port}"),
        Outbox(outbox),
        SenderMetrics(registry),
        send_timeout=1.0,
        max_backoff=0.3,
        **kwargs,
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_persisted_before_metering_answers_and_delivered_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    registry = CollectorRegistry()
    sender = sender_for(port, tmp_path / "outbox.db", registry)
    await sender.start()
    # Metering is down: persist() still returns, once each event is committed to disk.
    await asyncio.gather(*(sender.persist(usage_event(outcome(i), "gw-test")) for i in range(1, 21)))
    assert Outbox(tmp_path / "outbox.db").count() == 20
    assert sample(registry, "gateway_usage_events_total", outcome="persisted") == 20
    # Restart the sender with everything on disk: nothing is lost.
    await sender.stop(0.1)
    server, ledger = await start_metering(port, tmp_path / "usage.db")
    try:
        registry = CollectorRegistry()
        sender = sender_for(port, tmp_path / "outbox.db", registry)
        await sender.start()
        await sender.persist(usage_event(outcome(5), "gw-test"))  # a retry of a request already waiting
        await wait_for(lambda: sender.pending == 0)
        totals = await wait_metered(ledger, 20)
        assert totals.requests == 20 and totals.completion_tokens == sum(range(1, 21))
        assert Outbox(tmp_path / "outbox.db").count() == 0
        assert sample(registry, "gateway_usage_events_total", outcome="dead_lettered") == 0
        await sender.stop(1.0)
    finally:
        await server.server.stop(None)
        await ledger.stop()


async def test_concurrent_persists_share_commits(tmp_path: Path) -> None:
    """Group commit: 200 events persisted at once take far fewer than 200 transactions."""
    sender = sender_for(free_port(), tmp_path / "outbox.db", CollectorRegistry())
    await sender.start()
    commits = 0
    add = sender._outbox.add

    def counting_add(events):
        nonlocal commits
        commits += 1
        add(events)

    sender._outbox.add = counting_add
    await asyncio.gather(*(sender.persist(usage_event(outcome(i), "gw")) for i in range(200)))
    assert Outbox(tmp_path / "outbox.db").count() == 200
    assert commits <= 10
    await sender.stop(0.0)


async def test_refused_events_are_dead_lettered_and_replayable(tmp_path: Path) -> None:
    """Events metering rejects (a gateway clock 300+ s ahead) and batches it refuses whole are kept."""
    port = free_port()
    server, ledger = await start_metering(port, tmp_path / "usage.db")
    registry = CollectorRegistry()
    sender = sender_for(port, tmp_path / "outbox.db", registry)
    try:
        await sender.start()
        future = usage_event(outcome(1), "gw")
        future.occurred_at.FromNanoseconds(time.time_ns() + 3600 * 10**9)
        await sender.persist(future)
        await sender.persist(usage_event(outcome(2), "gw"))
        await wait_for(lambda: sample(registry, "gateway_usage_dead_letters") == 1 and sender.pending == 0)
        assert sender.dead_letters == 1
        outbox = Outbox(tmp_path / "outbox.db")
        [dead] = outbox.dead_letters()
        assert dead.event_id == "chatcmpl-1" and "future" in dead.reason
        assert (await totals_of(ledger)).requests == 1
        # The operator fixes the cause (here: a fresh timestamp would be needed; the clock was the
        # problem) and replays: the event is sent again and, still in the future, buried again.
        assert outbox.replay() == 1
        await wait_for(lambda: sample(registry, "gateway_usage_events_total", outcome="dead_lettered") == 2, 15)
    finally:
        await sender.stop(0.5)
        await server.server.stop(None)
        await ledger.stop()


async def test_wrong_service_is_dead_lettered_not_dropped(tmp_path: Path) -> None:
    """METERING_ADDR pointing at another gRPC service (UNIMPLEMENTED): every event is kept."""
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServiceServicer_to_server(engine_pb2_grpc.EngineServiceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    registry = CollectorRegistry()
    sender = sender_for(port, tmp_path / "outbox.db", registry)
    try:
        await sender.start()
        await asyncio.gather(*(sender.persist(usage_event(outcome(i), "gw")) for i in range(3)))
        await wait_for(lambda: sample(registry, "gateway_usage_dead_letters") == 3)
        reasons = {d.reason for d in Outbox(tmp_path / "outbox.db").dead_letters()}
        assert reasons and all("UNIMPLEMENTED" in r for r in reasons)
    finally:
        await sender.stop(0.2)
        await server.stop(None)


async def test_poison_row_is_dead_lettered_and_the_sender_goes_on(tmp_path: Path) -> None:
    port = free_port()
    server, ledger = await start_metering(port, tmp_path / "usage.db")
    Outbox(tmp_path / "outbox.db").add([("poison", b"\xff\xff not a protobuf")])
    registry = CollectorRegistry()
    sender = sender_for(port, tmp_path / "outbox.db", registry)
    try:
        await sender.start()
        await sender.persist(usage_event(outcome(7), "gw"))
        await wait_for(lambda: sender.pending == 0)
        assert (await wait_metered(ledger, 1)).completion_tokens == 7
        assert [d.event_id for d in Outbox(tmp_path / "outbox.db").dead_letters()] == ["poison"]
        assert sender.healthy
    finally:
        await sender.stop(0.5)
        await server.server.stop(None)
        await ledger.stop()


async def test_full_outbox_holds_events_in_memory_and_says_so(tmp_path: Path) -> None:
    """SQLITE_FULL, the error a full disk gives, from a database capped at its current size."""
    port = free_port()
    registry = CollectorRegistry()
    sender = sender_for(port, tmp_path / "outbox.db", registry)
    await sender.start()
    pages = sender._outbox._db.execute("PRAGMA page_count").fetchone()[0]
    sender._outbox._db.execute(f"PRAGMA max_page_count={pages}")
    big = [usage_event(outcome(i), "gw") for i in range(1, 41)]
    for event in big:
        # About a page each, in fields metering accepts (each at most 1024 characters).
        event.trace_id = event.finish_reason = event.api_key_id = event.endpoint = "x" * 1000
    await asyncio.gather(*(sender.persist(e) for e in big))
    assert not sender.healthy and "full" in sender.outbox_error
    assert sample(registry, "gateway_usage_outbox_healthy") == 0
    assert sample(registry, "gateway_usage_events_total", outcome="held_in_memory") > 0
    # Metering comes up: the held events are delivered from memory, the rest from disk.
    server, ledger = await start_metering(port, tmp_path / "usage.db")
    try:
        await wait_for(lambda: sender.pending == 0)
        totals = await wait_metered(ledger, 40)
        assert totals.requests == 40 and totals.completion_tokens == sum(range(1, 41))
        # Room again: the next write succeeds and health comes back.
        sender._outbox._db.execute("PRAGMA max_page_count=1073741823")
        await sender.persist(usage_event(outcome(41), "gw"))
        assert sender.healthy and sample(registry, "gateway_usage_outbox_healthy") == 1
    finally:
        await sender.stop(1.0)
        await server.server.stop(None)
        await ledger.stop()


def test_instance_id_is_made_once_and_kept(tmp_path: Path) -> None:
    from services.gateway.config import GatewaySettings

    settings = GatewaySettings(data_dir=tmp_path / "gw")
    first = settings.source_id()
    assert first.startswith("gateway-") and settings.source_id() == first
    assert [p.name for p in (tmp_path / "gw").iterdir()] == ["instance-id"]
    (tmp_path / "gw" / "instance-id").write_text("")
    try:
        settings.source_id()
    except ValueError as error:
        assert "empty" in str(error)
    else:
        raise AssertionError("an empty instance-id file must stop the start")


def test_the_event_of_many_choices_names_each_finish_reason_once() -> None:
    """64 prompts with n=3: the event once joined 192 reasons, past what metering accepts."""
    many = outcome(1)
    many.finish_reasons = ["length"] * 191 + ["stop"]
    event = usage_event(many, "gw")
    assert event.finish_reason == "length:191,stop" and event.completion_tokens == 1
