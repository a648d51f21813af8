"""Usage that billing systems take away, with the real metering processes: the CloudEvents push from two
replicas on one PostgreSQL while the receiver is SIGKILLed twice and a sending replica once (every event
arrives, none is lost, duplicates only of what the receiver dedupes by id, and the receiver's sums equal
the ledger's); the period exported as Parquet by the CLI and read back with DuckDB, and `reconcile
--from --to --export` finding no drift; a receiver that refuses (4xx) dead-lettered and shown in /health
and the metrics, one that times out retried until it takes the batch; and budget alerts at 50/80/100 %
sent once each by two replicas, signed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import grpc
import httpx
from llmserve.metering.v1 import metering_pb2 as mpb

from services.metering import webhook_signature
from tests.calls import event
from tests.credentials import metering_client
from tests.stack import metering_totals, metric, start_metering, wait_for
from tools.postgres import PostgresServer
from tools.processes import ROOT, ServiceProcess, free_port, http_ok

PRICES = "currency: USD\nprices:\n  - {model: m1, prompt: '0.15', cached_prompt: '0.05', completion: '0.61'}\n"
BATCHES, PER_BATCH = 60, 40
FAST_RETRIES = {
    "METERING_DELIVERY_TIMEOUT_SECONDS": "1.5",
    "METERING_DELIVERY_MAX_BACKOFF_SECONDS": "2",
    "METERING_EXPORT_COMMITS_PER_POST": "3",
}


class Receiver:
    """tests/webhook_receiver.py on one port, restartable (each start a new process on the same port)."""

    def __init__(self, log_dir: Path, folder: Path, *flags: str) -> None:
        self.port = free_port()
        self.log = folder / "received.jsonl"
        self.url = f"http://127.0.0.1:{self.port}/events"
        self._log_dir, self._flags, self._starts = log_dir, flags, 0
        self.process: ServiceProcess | None = None

    def start(self, *flags: str) -> None:
        self._starts += 1
        args = ["--port", str(self.port), "--log", str(self.log), *(flags or self._flags)]
        self.process = ServiceProcess(
            f"receiver-{self.port}-{self._starts}", "tests.webhook_receiver", args, self._log_dir, self.url
        )
        self.process.wait_ready(lambda: http_ok(self.url), 30)

    def kill(self) -> None:
        assert self.process is not None
        self.process.signal(signal.SIGKILL)
        self.process.proc.wait(10)

    def requests(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def cloud_events(self) -> list[dict]:
        return [e for r in self.requests() for e in json.loads(r["body"])]


async def _record(addresses: list[str], events: list[mpb.UsageEvent]) -> None:
    """To the first replica that answers (a killed one is skipped: metering dedupes what both saw)."""
    for address in addresses:
        try:
            async with metering_client(address) as client:
                acks = await client.record(events, timeout=5)
            assert all(a.status != mpb.ACK_STATUS_REJECTED for a in acks), acks
            return
        except grpc.aio.AioRpcError:
            continue
    raise AssertionError("no metering replica took the events")


def _health(process: ServiceProcess) -> dict:
    return httpx.get(process.metrics_url.replace("/metrics", "/health"), timeout=5).json()


def _metrics(process: ServiceProcess) -> str:
    return httpx.get(process.metrics_url, timeout=5).text


async def _import_prices(address: str) -> None:
    async with metering_client(address) as client:
        await client.import_prices(mpb.ImportPricesRequest(content=PRICES, format="yaml", actor="test"))


async def test_the_cloudevents_push_delivers_every_event_through_receiver_and_replica_kills(
    log_dir: Path, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    database = postgres_server.create_database("exports_push")
    receiver = Receiver(log_dir, tmp_path)
    await asyncio.to_thread(receiver.start)
    env = {"METERING_DATABASE_URL": database, "METERING_EXPORT_URL": receiver.url, **FAST_RETRIES}
    ports = [free_port(), free_port()]
    replicas = [
        await asyncio.to_thread(start_metering, log_dir, tmp_path / f"m{i}", ports[i], f"metering-push-{i}", env)
        for i in (0, 1)
    ]
    addresses = [r.address for r in replicas]
    try:
        await _import_prices(addresses[0])
        started = time.time()
        faults = {10: "receiver down", 14: "receiver up", 24: "kill metering 0", 30: "metering 0 up"}
        faults |= {40: "receiver down", 46: "receiver up"}
        for b in range(BATCHES):
            match faults.get(b):
                case "receiver down":
                    receiver.kill()
                case "receiver up":
                    await asyncio.to_thread(receiver.start)
                case "kill metering 0":
                    replicas[0].signal(signal.SIGKILL)
                    replicas[0].proc.wait(10)
                case "metering 0 up":
                    replicas[0] = await asyncio.to_thread(
                        start_metering, log_dir, tmp_path / "m0", ports[0], "metering-push-0-again", env
                    )
            batch = [
                event(b * PER_BATCH + i, source=f"push-{b % 3}", cached_tokens=i % 4, prompt_tokens=9 + i % 5)
                for i in range(PER_BATCH)
            ]
            await _record(addresses[b % 2 :] + addresses[: b % 2], batch)
            await asyncio.sleep(0.05)
        ended = time.time() + 1
        sent = BATCHES * PER_BATCH

        async def all_delivered() -> bool:
            pending = _health(replicas[1])["deliveries"]["cloudevents"]["pending"]
            return pending == 0 and len({(e["source"], e["id"]) for e in receiver.cloud_events()}) >= sent

        await wait_for(all_delivered, 90, "every event delivered")
        received = receiver.cloud_events()
        by_id = {(e["source"], e["id"]): e for e in received}
        duplicates = len(received) - len(by_id)
        ledger = await metering_totals(addresses[1])
        assert len(by_id) == sent == ledger.requests, (len(by_id), ledger.requests)
        assert sum(e["data"]["prompt_tokens"] for e in by_id.values()) == ledger.prompt_tokens
        assert sum(e["data"]["completion_tokens"] for e in by_id.values()) == ledger.completion_tokens
        assert sum(e["data"]["cost_micro"] for e in by_id.values()) == ledger.cost_micro > 0
        assert sum(Decimal(e["data"]["cost"]) for e in by_id.values()) == Decimal(ledger.cost_micro).scaleb(-6)
        # At least once: a duplicate is only a batch sent again after its answer was lost.
        assert duplicates <= sent // 2, duplicates
        assert _health(replicas[1])["deliveries"]["cloudevents"]["dead_letters"] == 0

        async def cost_exposed() -> bool:  # Prometheus reads the stored cost (refreshed every second)
            return metric(_metrics(replicas[1]), "metering_stored_cost_micro", model="m1") == ledger.cost_micro

        await wait_for(cost_exposed, 10, "the stored cost in the metrics")
        print(f"{sent} events pushed through 2 receiver kills and a replica kill; {duplicates} sent twice")

        # The period as a file, by the CLI, read back with DuckDB; then reconciled with no drift.
        period = [datetime.fromtimestamp(t, UTC).isoformat() for t in (started - 5, ended)]
        out = tmp_path / "usage.parquet"
        cli_env = {"METERING_DATABASE_URL": database, "PATH": "/usr/bin:/bin"}

        def metering_cli(*args: str) -> subprocess.CompletedProcess:
            command = [sys.executable, "-m", "services.metering", *args]
            return subprocess.run(command, cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=120)

        exported = metering_cli("export", "--from", period[0], "--to", period[1], "--out", str(out))
        assert exported.returncode == 0, exported.stderr
        rows, billed, micro, prompt = duckdb.execute(
            f"SELECT COUNT(*), SUM(BilledCost), SUM(x_CostMicro), SUM(x_PromptTokens) FROM '{out}'"
        ).fetchone()
        assert (rows, micro, prompt) == (sent, ledger.cost_micro, ledger.prompt_tokens)
        assert billed == Decimal(ledger.cost_micro).scaleb(-6)
        check = metering_cli("reconcile", "--from", period[0], "--to", period[1], "--export", str(out))
        assert check.returncode == 0 and "no drift: ledger, rollups, priced, export agree" in check.stdout, check
    finally:
        for process in [*replicas, receiver.process]:
            if process is not None:
                process.stop()


async def test_a_refusing_receiver_is_dead_lettered_and_a_slow_one_retried(log_dir: Path, tmp_path: Path) -> None:
    receiver = Receiver(log_dir, tmp_path)
    await asyncio.to_thread(receiver.start, "--refuse")
    env = {"METERING_EXPORT_URL": receiver.url, **FAST_RETRIES}
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-dead-letters", env)
    try:
        await _record([metering.address], [event(i, source="refused") for i in range(5)])

        async def dead_lettered() -> bool:
            return _health(metering)["deliveries"]["cloudevents"]["dead_letters"] == 1

        await wait_for(dead_lettered, 30, "the refused batch dead-lettered")
        health = _health(metering)
        assert health["status"] == "degraded"
        assert health["deliveries"]["cloudevents"]["last_dead_letter"].startswith("HTTP 400: ")
        text = _metrics(metering)
        assert metric(text, "metering_dead_letters", kind="cloudevents") == 1
        assert metric(text, "metering_deliveries_total", kind="cloudevents", outcome="dead_lettered") == 1
        await asyncio.sleep(3)  # not retried
        assert metric(_metrics(metering), "metering_deliveries_total", kind="cloudevents") == 1

        # The first POST waits past the sender's timeout: retried with backoff, then taken.
        receiver.kill()
        await asyncio.to_thread(receiver.start, "--slow", "1", "--slow-seconds", "20")
        await _record([metering.address], [event(i, source="slow") for i in range(5)])

        async def delivered() -> bool:
            return {e["id"] for e in receiver.cloud_events() if e["source"] == "slow"} == {f"ev-{i}" for i in range(5)}

        await wait_for(delivered, 60, "the slow receiver's batch")
        text = _metrics(metering)
        assert metric(text, "metering_deliveries_total", kind="cloudevents", outcome="retried") >= 1
        assert metric(text, "metering_exported_events_total") == 5

        async def drained() -> bool:  # /health is read from the store every second
            return _health(metering)["deliveries"]["cloudevents"]["pending"] == 0

        await wait_for(drained, 10, "the outbox drained")
    finally:
        metering.stop()
        if receiver.process is not None:
            receiver.process.stop()


async def test_budget_alerts_go_out_once_per_threshold_from_two_replicas_signed(
    log_dir: Path, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    receiver = Receiver(log_dir, tmp_path)
    await asyncio.to_thread(receiver.start)
    secret = tmp_path / "webhook.secret"
    secret.write_text("whsec_c2VjcmV0LWZvci10aGUtdGVzdA==")
    env = {
        "METERING_DATABASE_URL": postgres_server.create_database("exports_alerts"),
        "METERING_ALERT_URL": receiver.url,
        "METERING_ALERT_CHECK_SECONDS": "0.2",
        "METERING_WEBHOOK_SECRET_FILE": str(secret),
        **FAST_RETRIES,
    }
    replicas = [
        await asyncio.to_thread(start_metering, log_dir, tmp_path / f"m{i}", None, f"metering-alerts-{i}", env)
        for i in (0, 1)
    ]
    addresses = [r.address for r in replicas]
    try:
        await _import_prices(addresses[0])
        # Each event: 10 prompt + 5 completion tokens = 15 tokens; 10 × 0.15 + 5 × 0.61 per million = 5 micro-units.
        async with metering_client(addresses[0]) as client:
            await client.set_limits(
                mpb.KeyLimits(
                    api_key_id="alerted", token_budget=150, budget_period=mpb.BUDGET_PERIOD_MONTH, money_budget_micro=50
                )
            )
        steps = (5, 3, 2, 4)  # 75 tokens (50 %), 120 (80 %), 150 (100 %), 210 (140 %)
        n = 0
        for step, count in enumerate(steps):
            events = [event(n + i, source="alerts", api_key_id="alerted", completion_tokens=5) for i in range(count)]
            n += count
            await _record([addresses[step % 2]], events)
            await asyncio.sleep(1.0)

        async def six() -> bool:
            return len(receiver.requests()) >= 6

        await wait_for(six, 30, "six alerts")
        await asyncio.sleep(2)  # both replicas checked again meanwhile
        requests = receiver.requests()
        key = webhook_signature.secret_key(secret.read_text())
        assert all(webhook_signature.verify(key, r["headers"], r["body"].encode()) for r in requests)
        alerts = [json.loads(r["body"]) for r in requests]
        assert Counter((a["budget"], a["threshold_percent"]) for a in alerts) == {
            (budget, t): 1 for budget in ("tokens", "money") for t in (50, 80, 100)
        }
        assert len({r["headers"]["webhook-id"] for r in requests}) == 6
        money = [a for a in alerts if a["budget"] == "money"]
        assert {a["currency"] for a in money} == {"USD"} and all(a["budget_amount"] == 50 for a in money)
        assert all(a["subject"] == "alerted" and a["period"] == "month" for a in alerts)
    finally:
        for process in [*replicas, receiver.process]:
            if process is not None:
                process.stop()
