"""The SQLite (WAL) store: the embedded default, one metering process per file."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from services.metering.store import EVENT_COLUMNS, UsageStore

_INSERT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({','.join('?' * len(EVENT_COLUMNS))})"


class SqliteStore(UsageStore):
    bucket_sql = "CAST({} AS INTEGER) / ? * ?"

    def __init__(self, path: Path) -> None:
        # One process owns the file, so its running totals are one row per model.
        super().__init__(writer="")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # An acknowledged event must survive power loss, not just a killed process.
        self._db.execute("PRAGMA synchronous=FULL")
        self._adopt_unversioned()
        self.migrate()

    def _adopt_unversioned(self) -> None:
        """A store made before versioned migrations may lack columns added since; migration 1
        (CREATE TABLE IF NOT EXISTS) then takes it as it is."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if not columns:
            return
        for column in ("model_name", "caller"):
            if column not in columns:
                self._db.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()

    def _many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            self._db.executemany(sql, rows)

    def _insert_new(self, rows: list[tuple]) -> set[tuple[str, str]]:
        # Which are new is decided first, then those go in with one executemany: a statement per row
        # cost more than the rest of the commit together at batch 1000. The write transaction
        # (BEGIN IMMEDIATE) keeps anyone else from inserting in between.
        seen = self._existing([(row[0], row[1]) for row in rows])
        fresh = [row for row in rows if (row[0], row[1]) not in seen]
        self._many(_INSERT, fresh)
        return {(row[0], row[1]) for row in fresh}

    def _existing(self, keys: list[tuple[str, str]], chunk: int = 500) -> set[tuple[str, str]]:
        by_source: dict[str, list[str]] = defaultdict(list)
        for source, event_id in keys:
            by_source[source].append(event_id)
        found: set[tuple[str, str]] = set()
        for source, ids in by_source.items():
            for start in range(0, len(ids), chunk):
                part = ids[start : start + chunk]
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT event_id FROM events WHERE source = ? AND event_id IN ({marks})", [source, *part]
                )
                found.update((source, event_id) for (event_id,) in rows)
        return found
