"""The PostgreSQL store: several metering replicas on one database behave as one service.

Idempotency across replicas comes from the primary key: a replica inserts with ON CONFLICT DO
NOTHING, so of two replicas that receive one event at once, the second waits for the first's
transaction and then counts a duplicate. Each replica adds to its own rows of the running totals
(its writer id), so commits of different replicas never wait on one row. A lost connection is
reopened on the next call; until then calls fail with StoreUnavailable (gRPC UNAVAILABLE), which
senders retry."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import errors

from services.metering.events import UsageEvent
from services.metering.key_changes import CHANNEL
from services.metering.store import EVENT_COLUMNS, Commit, StoreUnavailable, UsageStore

log = logging.getLogger(__name__)

_TYPES = {
    "occurred_at": "float8",
    "received_at": "float8",
    "streamed": "int2",
    "prompt_tokens": "int8",
    "completion_tokens": "int8",
    "cached_tokens": "int8",
    "ttft_seconds": "float8",
    "generation_seconds": "float8",
    "request_seconds": "float8",
    "cost_micro": "int8",
    "images": "int8",
    "embedding_inputs": "int8",
}
# One statement for the whole batch: the columns as arrays, unnested in the given (sorted) order, so
# two replicas inserting overlapping batches take the key locks in one order.
_INSERT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"?::{_TYPES.get(c, 'text')}[]" for c in EVENT_COLUMNS)
    + ") ON CONFLICT (source, event_id) DO NOTHING RETURNING source, event_id"
)
# Any number that other users of the database are unlikely to pick for their own advisory locks.
_MIGRATION_LOCK = 0x6C6C6D73  # "llms"
# A commit that lost a deadlock or serialization race is run again, at most this many times.
_RETRIES = 3


def _placeholders(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresStore(UsageStore):
    shared = True
    bucket_sql = "CAST(FLOOR({}) AS BIGINT) / ? * ?"

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        super().__init__(writer=uuid.uuid4().hex[:16])
        self._url = url
        self._connect_timeout = connect_timeout
        self._db: psycopg.Connection | None = None
        self.migrate()

    def _connection(self) -> psycopg.Connection:
        if self._db is None or self._db.closed:
            try:
                self._db = psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, int(self._connect_timeout)),
                    application_name="llmserve-metering",
                )
            except psycopg.OperationalError as error:
                raise StoreUnavailable(f"PostgreSQL cannot be reached: {error}".strip()) from None
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    @contextmanager
    def _lost_connection(self) -> Iterator[None]:
        """A driver error that broke the connection becomes StoreUnavailable, and the next call reconnects."""
        try:
            yield
        except psycopg.OperationalError as error:
            if self._db is not None and (self._db.closed or self._db.broken):
                self._db = None
                raise StoreUnavailable(f"the connection to PostgreSQL was lost: {error}".strip()) from None
            raise

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lost_connection(), self._connection().transaction():
            yield

    def _lock_schema(self) -> None:
        self._rows("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    # Reservations against one subject wait on each other (every replica's); the next statement then sees
    # what the one before committed.
    _LOCK_ROWS = " FOR UPDATE OF l"
    _SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def _announce_change(self) -> None:
        self._rows(f"NOTIFY {CHANNEL}")

    _RENEW_WITH_LIMITS = True

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lost_connection():
            cursor = self._connection().execute(_placeholders(sql), params or None)
            return cursor.fetchall() if cursor.description is not None else []

    def _many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            with self._lost_connection(), self._connection().cursor() as cursor:
                cursor.executemany(_placeholders(sql), rows)

    def _insert_new(self, rows: list[tuple]) -> set[tuple[str, str]]:
        if not rows:
            return set()
        columns = [list(column) for column in zip(*rows)]
        return {(source, event_id) for source, event_id in self._rows(_INSERT, columns)}

    def commit(self, events: list[UsageEvent], received_at: float, rejected: dict[str, int]) -> Commit:
        for attempt in range(_RETRIES + 1):
            try:
                return super().commit(events, received_at, rejected)
            except (errors.DeadlockDetected, errors.SerializationFailure) as error:
                if attempt == _RETRIES:
                    raise
                log.warning("commit retried after %s", type(error).__name__)
        raise AssertionError("unreachable")
