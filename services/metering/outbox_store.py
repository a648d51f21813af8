"""The outbox (migration 0009): deliveries written in the transaction that records what they tell, taken by
any replica with a lease, deleted once delivered, put off with backoff, or dead-lettered with the reason.
Which kinds are written is in `deliveries` (a replica that delivers a kind adds it at start)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from services.metering.store_primitives import StorePrimitives

CLOUDEVENTS, ALERTS = "cloudevents", "alerts"


@dataclass(frozen=True)
class Claimed:
    outbox_id: str
    body: str
    attempts: int


@dataclass(frozen=True)
class OutboxStatus:
    pending: int = 0
    oldest_seconds: float = 0.0
    dead_letters: int = 0
    last_dead_letter: str = ""


class OutboxStore(StorePrimitives):
    # PostgreSQL: replicas taking rows at once skip each other's instead of waiting (and never take the same).
    _SKIP_LOCKED = ""

    def enable_delivery(self, kind: str, now: float) -> None:
        """From now on commits write `kind`'s outbox rows (every replica: the change number moves)."""
        with self._transaction():
            added = self._rows(
                "INSERT INTO deliveries (kind, since) VALUES (?, ?) ON CONFLICT (kind) DO NOTHING RETURNING kind",
                (kind, now),
            )
            if added:
                self._next_version()

    def _delivering(self, kind: str) -> bool:
        """Inside a transaction (read once per change number)."""
        kinds = self._cached("deliveries")
        if kinds is None:
            kinds = self._cache("deliveries", frozenset(k for (k,) in self._rows("SELECT kind FROM deliveries")))
        return kind in kinds

    def _enqueue(self, kind: str, body: str, now: float) -> None:
        """Inside the transaction that records what `body` tells."""
        self._rows(
            "INSERT INTO outbox (outbox_id, kind, created_at, due_at, body) VALUES (?, ?, ?, ?, ?)",
            (f"{kind}-{uuid.uuid4().hex}", kind, now, now, body),
        )

    def claim(self, kind: str, now: float, lease_seconds: float, limit: int) -> list[Claimed]:
        """The oldest due rows of `kind`, held for `lease_seconds` (a holder that dies lets them fall due again)."""
        with self._transaction():
            rows = self._rows(
                "UPDATE outbox SET due_at = ?, attempts = attempts + 1 WHERE outbox_id IN"
                " (SELECT outbox_id FROM outbox WHERE kind = ? AND due_at <= ?"
                f" ORDER BY created_at LIMIT ?{self._SKIP_LOCKED}) RETURNING outbox_id, body, attempts, created_at",
                (now + lease_seconds, kind, now, limit),
            )
        return [Claimed(r[0], r[1], int(r[2])) for r in sorted(rows, key=lambda r: (r[3], r[0]))]

    def delivered(self, outbox_ids: Sequence[str]) -> None:
        with self._transaction():
            self._many("DELETE FROM outbox WHERE outbox_id = ?", [(i,) for i in sorted(outbox_ids)])

    def put_off(self, outbox_ids: Sequence[str], due_at: float, error: str) -> None:
        with self._transaction():
            self._many(
                "UPDATE outbox SET due_at = ?, last_error = ? WHERE outbox_id = ?",
                [(due_at, error, i) for i in sorted(outbox_ids)],
            )

    def dead_letter(self, outbox_ids: Sequence[str], now: float, reason: str) -> None:
        with self._transaction():
            for i in sorted(outbox_ids):
                self._rows(
                    "INSERT INTO dead_letters (outbox_id, kind, created_at, failed_at, attempts, reason, body)"
                    " SELECT outbox_id, kind, created_at, ?, attempts, ?, body FROM outbox WHERE outbox_id = ?"
                    " ON CONFLICT (outbox_id) DO NOTHING",
                    (now, reason, i),
                )
                self._rows("DELETE FROM outbox WHERE outbox_id = ?", (i,))

    def outbox_status(self, now: float) -> dict[str, OutboxStatus]:
        """Per kind delivered or written: rows waiting, the age of the oldest, and rows dead-lettered."""
        waiting = {
            kind: (int(count), oldest)
            for kind, count, oldest in self._rows("SELECT kind, COUNT(*), MIN(created_at) FROM outbox GROUP BY kind")
        }
        dead = {kind: int(count) for kind, count in self._rows("SELECT kind, COUNT(*) FROM dead_letters GROUP BY kind")}
        last = {
            kind: reason
            for kind, reason in self._rows(
                "SELECT d.kind, d.reason FROM dead_letters d WHERE d.failed_at ="
                " (SELECT MAX(failed_at) FROM dead_letters e WHERE e.kind = d.kind)"
            )
        }
        kinds = {k for (k,) in self._rows("SELECT kind FROM deliveries")} | set(waiting) | set(dead)
        out = {}
        for kind in sorted(kinds):
            count, oldest = waiting.get(kind, (0, None))
            out[kind] = OutboxStatus(
                count, 0.0 if oldest is None else max(0.0, now - oldest), dead.get(kind, 0), last.get(kind, "")
            )
        return out
