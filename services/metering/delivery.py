"""Delivers the outbox to an HTTP receiver, at least once: due rows are taken with a lease, POSTed (signed
when a secret is set), and deleted once the receiver answers 2xx. A timeout, a refused connection, a 5xx,
408 or 429 puts them off with exponential backoff (the due time is in the database: a restart, or another
replica, carries on from there). Any other answer (a 4xx: the receiver will never take it) dead-letters
them with the reason, so one bad batch never blocks the rest."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from services.metering import cloudevents, webhook_signature
from services.metering.ledger import Ledger
from services.metering.metrics import MeteringMetrics
from services.metering.outbox_store import ALERTS, CLOUDEVENTS, Claimed, OutboxStatus
from services.metering.store import UsageStore

log = logging.getLogger(__name__)

DELIVERED, RETRIED, DEAD_LETTERED = "delivered", "retried", "dead_lettered"
_IDLE_SECONDS = 0.5
_ERROR_CHARS = 300


def outcome(status: int) -> str:
    if 200 <= status < 300:
        return DELIVERED
    if status in (408, 429) or status >= 500:
        return RETRIED
    return DEAD_LETTERED


def backoff(attempts: int, most: float) -> float:
    """Seconds before try `attempts + 1`: 1, 2, 4, ... up to `most`."""
    return min(most, 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True)
class Target:
    kind: str
    url: str
    content_type: str
    # Outbox rows per POST: a CloudEvents batch takes several commits' events; an alert goes alone.
    rows_per_post: int


class Deliverer:
    def __init__(
        self,
        ledger: Ledger,
        target: Target,
        metrics: MeteringMetrics,
        secret: bytes | None,
        timeout_seconds: float,
        max_backoff_seconds: float,
    ) -> None:
        self._ledger = ledger
        self._target = target
        self._metrics = metrics
        self._secret = secret
        self._timeout = timeout_seconds
        self._max_backoff = max_backoff_seconds
        # A holder that dies lets its rows fall due again once the lease ends; a live one answers first.
        self._lease = 2 * timeout_seconds + 5.0
        self._client = httpx.AsyncClient(timeout=timeout_seconds)
        body_of: dict[str, Callable[[list[Claimed]], Awaitable[tuple[bytes, int]]]] = {
            CLOUDEVENTS: self._cloudevents,
            ALERTS: self._alert,
        }
        self._body_of = body_of[target.kind]

    @property
    def kind(self) -> str:
        return self._target.kind

    async def run(self) -> None:
        try:
            while True:
                try:
                    busy = await self.once()
                except Exception as error:  # the store or the network: try again shortly
                    log.warning("%s delivery: %s", self._target.kind, error)
                    busy = False
                if not busy:
                    await asyncio.sleep(_IDLE_SECONDS)
        finally:
            await self._client.aclose()

    async def once(self) -> bool:
        """Takes and delivers one POST's worth of due rows; whether there were any."""
        kind = self._target.kind
        claimed = await self._ledger.change(
            UsageStore.claim, kind=kind, lease_seconds=self._lease, limit=self._target.rows_per_post
        )
        if not claimed:
            return False
        ids = [c.outbox_id for c in claimed]
        body, events = await self._body_of(claimed)
        if events == 0:
            await self._ledger.read(UsageStore.delivered, outbox_ids=ids)
            return True
        result, reason = await self._post(ids[0], body)
        self._metrics.deliveries.labels(kind, result).inc()
        if result == DELIVERED:
            await self._ledger.read(UsageStore.delivered, outbox_ids=ids)
            if kind == CLOUDEVENTS:
                self._metrics.exported_events.inc(events)
        elif result == DEAD_LETTERED:
            log.error("%s delivery dead-lettered %d rows: %s", kind, len(ids), reason)
            await self._ledger.change(UsageStore.dead_letter, outbox_ids=ids, reason=reason)
        else:
            wait = backoff(min(c.attempts for c in claimed), self._max_backoff)
            log.warning("%s delivery failed (%s); again in %.0f s", kind, reason, wait)
            await self._ledger.read(UsageStore.put_off, outbox_ids=ids, due_at=time.time() + wait, error=reason)
        return result == DELIVERED

    async def _post(self, message_id: str, body: bytes) -> tuple[str, str]:
        headers = {"content-type": self._target.content_type}
        if self._secret is not None:
            headers |= webhook_signature.headers(self._secret, message_id, int(time.time()), body)
        try:
            answer = await self._client.post(self._target.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return RETRIED, f"no answer within {self._timeout:g} s"
        except httpx.HTTPError as error:
            return RETRIED, f"{type(error).__name__}: {error}"
        return outcome(answer.status_code), f"HTTP {answer.status_code}: {answer.text[:_ERROR_CHARS]}"

    async def _cloudevents(self, claimed: list[Claimed]) -> tuple[bytes, int]:
        keys = sorted({(source, event_id) for c in claimed for source, event_id in json.loads(c.body)})
        rows = await self._ledger.read(UsageStore.usage_rows_of, keys=keys)
        if len(rows) < len(keys):
            log.warning("%d events of the outbox were pruned before they were pushed", len(keys) - len(rows))
        return cloudevents.batch(rows), len(rows)

    async def _alert(self, claimed: list[Claimed]) -> tuple[bytes, int]:
        (one,) = claimed
        return one.body.encode(), 1


async def check_budgets(ledger: Ledger, interval_seconds: float) -> None:
    """Every interval: writes the alerts of thresholds newly crossed (the outbox delivers them)."""
    while True:
        try:
            for alert in await ledger.change(UsageStore.check_budgets):
                log.info("budget alert %s (%d of %d)", alert.alert_id, alert.spent, alert.amount)
        except Exception as error:
            log.warning("budgets not checked: %s", error)
        await asyncio.sleep(interval_seconds)


class OutboxWatch:
    """The outbox's standing for /health and the gauges, read from the store every second (the same on
    every replica of a shared store)."""

    def __init__(self, ledger: Ledger, metrics: MeteringMetrics) -> None:
        self._ledger = ledger
        self._metrics = metrics
        self.status: dict[str, OutboxStatus] = {}

    async def run(self, interval_seconds: float = 1.0) -> None:
        while True:
            try:
                self.status = await self._ledger.change(UsageStore.outbox_status)
                for kind, s in self.status.items():
                    self._metrics.outbox_pending.labels(kind).set(s.pending)
                    self._metrics.outbox_oldest.labels(kind).set(s.oldest_seconds)
                    self._metrics.dead_letters.labels(kind).set(s.dead_letters)
            except Exception as error:
                log.warning("outbox status not read: %s", error)
            await asyncio.sleep(interval_seconds)

    def health(self) -> dict:
        deliveries = {
            kind: {
                "pending": s.pending,
                "oldest_pending_seconds": round(s.oldest_seconds, 3),
                "dead_letters": s.dead_letters,
                "last_dead_letter": s.last_dead_letter,
            }
            for kind, s in self.status.items()
        }
        degraded = any(s.dead_letters for s in self.status.values())
        return {"status": "degraded" if degraded else "ok", "deliveries": deliveries}
