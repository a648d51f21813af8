"""The gateway's durable outbox (SQLite in its data directory): usage events wait here while the
metering service is slow or down, across restarts, until an acknowledgement removes them."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class Outbox:
    """Not thread-safe: the sender uses it from one thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE, payload BLOB)"
        )

    def add(self, events: list[tuple[str, bytes]]) -> None:
        """(event id, serialized event) pairs; an id already waiting is kept once."""
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO pending (event_id, payload) VALUES (?, ?)", events)

    def oldest(self, limit: int) -> list[tuple[str, bytes]]:
        return self._db.execute("SELECT event_id, payload FROM pending ORDER BY seq LIMIT ?", (limit,)).fetchall()

    def remove(self, event_ids: list[str]) -> None:
        with self._db:
            self._db.executemany("DELETE FROM pending WHERE event_id = ?", [(i,) for i in event_ids])

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]

    def close(self) -> None:
        self._db.close()
