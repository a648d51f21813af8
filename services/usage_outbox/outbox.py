"""A service's durable outbox of usage events (SQLite in its data directory). Every usage event is committed here
before its response ends; the sender removes it once metering acknowledged it. Events metering refused
for good move to the dead-letter table, where an operator can list them and send them again."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

OUTBOX_FILE = "outbox.sqlite3"


@dataclass(frozen=True)
class DeadLetter:
    event_id: str
    payload: bytes
    reason: str
    failed_at: float


class Outbox:
    """Not thread-safe: the sender uses it from one thread; the admin CLI from its own process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pending"
            " (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE, payload BLOB)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dead_letter"
            " (event_id TEXT PRIMARY KEY, payload BLOB, reason TEXT, failed_at REAL)"
        )

    def add(self, events: list[tuple[str, bytes]]) -> None:
        """(event id, serialized event) pairs, in one transaction (one fsync); an id already waiting is kept once."""
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO pending (event_id, payload) VALUES (?, ?)", events)

    def oldest(self, limit: int) -> list[tuple[str, bytes]]:
        return self._db.execute("SELECT event_id, payload FROM pending ORDER BY seq LIMIT ?", (limit,)).fetchall()

    def remove(self, event_ids: list[str]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM pending WHERE event_id = ?", [(i,) for i in event_ids])

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]

    def bury(self, failures: list[tuple[str, str]]) -> None:
        """Moves (event id, reason) pairs from pending to the dead-letter table, in one transaction."""
        now = time.time()
        with self._db:
            for event_id, reason in failures:
                self._db.execute(
                    "INSERT OR REPLACE INTO dead_letter (event_id, payload, reason, failed_at) "
                    "SELECT event_id, payload, ?, ? FROM pending WHERE event_id = ?",
                    (reason, now, event_id),
                )
                self._db.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        rows = self._db.execute(
            "SELECT event_id, payload, reason, failed_at FROM dead_letter ORDER BY failed_at LIMIT ?", (limit,)
        ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def dead_letter_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]

    def replay(self, event_ids: list[str] | None = None) -> int:
        """Moves dead letters (all, or the given ids) back to pending; returns how many."""
        with self._db:
            if event_ids is None:
                event_ids = [row[0] for row in self._db.execute("SELECT event_id FROM dead_letter")]
            moved = 0
            for event_id in event_ids:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO pending (event_id, payload)"
                    " SELECT event_id, payload FROM dead_letter WHERE event_id = ?",
                    (event_id,),
                )
                moved += cursor.rowcount
                self._db.execute("DELETE FROM dead_letter WHERE event_id = ?", (event_id,))
        return moved

    def close(self) -> None:
        self._db.close()
