"""What the usage stores share: the running totals, the queries, and one commit's SQL. The two stores
(SQLite, the embedded default; PostgreSQL, for several replicas) differ only in how they connect, take
a write transaction and insert the events that are new; both apply the same numbered migrations
(services/metering/migrations/). Not thread-safe: one thread uses a store."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from services.metering.events import UsageEvent
from services.metering.limits import WINDOW_SECONDS, Decision, KeyLimits, Spent, Standing, decide, period_start
from services.metering.schema import MIGRATIONS
from services.metering.throughput import Cells, oldest_cell, spread


class StoreUnavailable(RuntimeError):
    """The database cannot be reached now; the caller may retry (a gRPC UNAVAILABLE)."""


_STATUS_COLUMN = {"ok": "ok_requests", "abort": "aborted_requests", "error": "failed_requests"}
TOTAL_FIELDS = (
    "requests",
    "ok_requests",
    "aborted_requests",
    "failed_requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "generation_seconds",
)


@dataclass
class Totals:
    requests: int = 0
    ok_requests: int = 0
    aborted_requests: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    generation_seconds: float = 0.0

    def add_event(self, event: UsageEvent) -> None:
        self.requests += 1
        setattr(self, _STATUS_COLUMN[event.status], getattr(self, _STATUS_COLUMN[event.status]) + 1)
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        self.cached_tokens += event.cached_tokens
        self.generation_seconds += event.generation_seconds

    def values(self) -> tuple[int | float, ...]:
        return tuple(getattr(self, name) for name in TOTAL_FIELDS)

    def add(self, other: Totals) -> None:
        for name in TOTAL_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class ModelTotals:
    totals: Totals = field(default_factory=Totals)
    duplicated: int = 0


@dataclass
class Commit:
    """What one write transaction changed: for the acks and this replica's metrics."""

    inserted: list[bool]
    duplicated_by_model: dict[str, int]


@dataclass(frozen=True)
class Query:
    start: float | None = None
    end: float | None = None
    model: str = ""
    api_key_id: str = ""
    model_name: str = ""
    caller: str = ""


# What each grouping key selects; the registered model name of rows stored before it was recorded is
# their served model's.
_GROUP_COLUMNS = {
    "model": "model",
    "api_key_id": "api_key_id",
    "caller": "caller",
    "model_name": "CASE WHEN model_name = '' THEN model ELSE model_name END",
}
EVENT_COLUMNS = (
    "source", "event_id", "occurred_at", "received_at", "model", "api_key_id", "endpoint", "streamed",
    "finish_reason", "status", "prompt_tokens", "completion_tokens", "cached_tokens", "ttft_seconds",
    "generation_seconds", "request_seconds", "trace_id", "model_name", "caller",
)
_INT = "CAST(SUM({}) AS BIGINT)"
_SUMS = ", ".join((
    "COUNT(*)",
    *(_INT.format(f"CASE WHEN status = '{s}' THEN 1 ELSE 0 END") for s in ("ok", "abort", "error")),
    *(_INT.format(c) for c in ("prompt_tokens", "completion_tokens", "cached_tokens")),
    "SUM(generation_seconds)",
))
_COUNTER_UPSERT = (
    "INSERT INTO counters (model, writer, requests, ok_requests, aborted_requests, failed_requests,"
    " prompt_tokens, completion_tokens, cached_tokens, generation_seconds, duplicated)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (model, writer) DO UPDATE SET "
    + ", ".join(f"{c} = counters.{c} + excluded.{c}" for c in (*TOTAL_FIELDS, "duplicated"))
)
_REJECTION_UPSERT = (
    "INSERT INTO rejection_counts (kind, writer, count) VALUES (?,?,?)"
    " ON CONFLICT (kind, writer) DO UPDATE SET count = rejection_counts.count + excluded.count"
)
_CELL_UPSERT = (
    "INSERT INTO throughput_cells (model, second, writer, tokens) VALUES (?,?,?,?)"
    " ON CONFLICT (model, second, writer) DO UPDATE SET tokens = throughput_cells.tokens + excluded.tokens"
)
# Cells this far behind the oldest a window reads are deleted, in their own statement: no commit
# still adds to them, so the delete never waits on one.
_CELL_KEEP_SECONDS = 120

# What a reservation counts: its exact usage once settled; while open, what it reserved as long as its
# holder's lease runs (a gateway gone stops holding it).
_COUNTED = (
    "CASE WHEN r.settled_tokens IS NOT NULL THEN r.settled_tokens"
    " WHEN h.lease_until >= ? THEN r.reserved_tokens ELSE 0 END"
)
_RESERVATIONS = "FROM reservations r LEFT JOIN reservation_holders h ON h.source = r.source WHERE r.api_key_id = ?"
# Everything a key has spent, in one statement (one snapshot: a commit that records an event and
# deletes its reservation is seen whole or not at all).
_SPENT = f"""SELECT
 (SELECT COUNT(*) FROM events WHERE api_key_id = ? AND received_at >= ?),
 (SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM events WHERE api_key_id = ? AND received_at >= ?),
 (SELECT MIN(received_at) FROM events WHERE api_key_id = ? AND received_at >= ?),
 (SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM events WHERE api_key_id = ? AND received_at >= ?),
 (SELECT COUNT(*) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT COALESCE(SUM({_COUNTED}), 0) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT MIN(r.created_at) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT COALESCE(SUM({_COUNTED}), 0) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT COALESCE(SUM(r.reserved_tokens), 0) {_RESERVATIONS} AND r.settled_tokens IS NULL AND h.lease_until >= ?)"""
_LIMIT_COLUMNS = "api_key_id, requests_per_minute, tokens_per_minute, token_budget, budget_period"
# Open reservations of holders gone this long, and settled ones whose event never came, are deleted.
_RESERVATION_KEEP_SECONDS = 3600.0


def event_row(e: UsageEvent, received_at: float) -> tuple:
    return (
        e.source, e.event_id, e.occurred_at, received_at, e.model, e.api_key_id, e.endpoint, int(e.streamed),
        e.finish_reason, e.status, e.prompt_tokens, e.completion_tokens, e.cached_tokens,
        e.time_to_first_token_seconds, e.generation_seconds, e.request_seconds, e.trace_id,
        e.model_name or e.model, e.caller,
    )


class UsageStore(ABC):
    """`writer` keys this process's rows of the running totals (see migration 0002)."""

    # Whether other processes may write the same database (PostgreSQL): then the Prometheus counters
    # of one replica count only its own ingest, and totals come from the database.
    shared: bool = False
    # SQL of the start of the series bucket an event falls in, from a bucket width parameter.
    bucket_sql: str = ""

    def __init__(self, writer: str) -> None:
        self.writer = writer
        self._last_prune = 0.0

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]: ...

    @abstractmethod
    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """Runs one statement written with `?` placeholders; its rows."""

    @abstractmethod
    def _many(self, sql: str, rows: Sequence[Sequence[object]]) -> None: ...

    @abstractmethod
    def _insert_new(self, rows: list[tuple]) -> set[tuple[str, str]]:
        """Inserts the event rows (distinct keys, sorted) whose (source, event_id) is not stored yet,
        inside the open transaction; their keys."""

    def _lock_schema(self) -> None:
        """Inside the migration transaction: keeps other processes from migrating at the same time."""

    def migrate(self) -> None:
        """Applies the migrations this database has not recorded, in order, in one transaction."""
        with self._transaction():
            self._lock_schema()
            self._rows(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            applied = {version for (version,) in self._rows("SELECT version FROM schema_migrations")}
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                for statement in migration.statements():
                    self._rows(statement)
                self._rows(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", (migration.version, migration.name, time.time())
                )

    def schema_version(self) -> int:
        return self._rows("SELECT MAX(version) FROM schema_migrations")[0][0] or 0

    def commit(self, events: list[UsageEvent], received_at: float, rejected: dict[str, int]) -> Commit:
        """Inserts the events (a (source, event_id) seen before is a duplicate) and adds to the running
        totals, rejections and throughput cells, all in one transaction."""
        candidates: dict[tuple[str, str], tuple] = {}
        for e in events:
            candidates.setdefault((e.source, e.event_id), event_row(e, received_at))
        with self._transaction():
            new = self._insert_new([candidates[key] for key in sorted(candidates)])
            inserted: list[bool] = []
            by_model: dict[str, Totals] = defaultdict(Totals)
            duplicated: dict[str, int] = defaultdict(int)
            cells: dict[str, Cells] = defaultdict(dict)
            for e in events:
                key = (e.source, e.event_id)
                fresh = key in new
                inserted.append(fresh)
                if fresh:
                    new.discard(key)
                    by_model[e.model].add_event(e)
                    spread(cells[e.model], e.occurred_at, e.generation_seconds, e.completion_tokens, received_at)
                else:
                    duplicated[e.model] += 1
            # Rows in one order in every transaction: two replicas' commits never wait on each other in a cycle.
            self._many(_COUNTER_UPSERT, [
                (model, self.writer, *by_model.get(model, Totals()).values(), duplicated.get(model, 0))
                for model in sorted(set(by_model) | set(duplicated))
            ])
            self._many(_REJECTION_UPSERT, [(kind, self.writer, count) for kind, count in sorted(rejected.items())])
            self._many(_CELL_UPSERT, [
                (model, second, self.writer, tokens)
                for model in sorted(cells) for second, tokens in sorted(cells[model].items())
            ])
            # The event now counts against its key: the reservation it replaces is gone (same transaction).
            self._many("DELETE FROM reservations WHERE source = ? AND event_id = ?", sorted(candidates))
        self._prune_cells(received_at)
        return Commit(inserted, dict(duplicated))

    def _lock_key(self, api_key_id: str) -> None:
        """Inside a reservation's transaction: one reservation of a key at a time, across replicas."""

    def set_limits(self, limits: KeyLimits, now: float) -> None:
        with self._transaction():
            self._rows("DELETE FROM key_limits WHERE api_key_id = ?", (limits.api_key_id,))
            if limits.any:
                self._rows(
                    f"INSERT INTO key_limits ({_LIMIT_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (limits.api_key_id, limits.requests_per_minute, limits.tokens_per_minute, limits.token_budget,
                     limits.budget_period, now),
                )

    def all_limits(self) -> list[KeyLimits]:
        return [KeyLimits(*row) for row in self._rows(f"SELECT {_LIMIT_COLUMNS} FROM key_limits ORDER BY api_key_id")]

    def limits_of(self, api_key_id: str) -> KeyLimits:
        rows = self._rows(f"SELECT {_LIMIT_COLUMNS} FROM key_limits WHERE api_key_id = ?", (api_key_id,))
        return KeyLimits(*rows[0]) if rows else KeyLimits(api_key_id)

    def _spent(self, limits: KeyLimits, now: float) -> Spent:
        key, minute, period = limits.api_key_id, now - WINDOW_SECONDS, period_start(limits.budget_period, now)
        row = self._rows(_SPENT, (
            key, minute, key, minute, key, minute, key, period,
            key, minute, now, key, minute, key, minute, now, key, period, key, now,
        ))[0]
        event_requests, event_tokens, event_oldest, event_budget = row[0], row[1], row[2], row[3]
        held_requests, held_tokens, held_oldest, held_budget, reserved = row[4], row[5], row[6], row[7], row[8]
        oldest = min((t for t in (event_oldest, held_oldest) if t is not None), default=None)
        return Spent(
            requests_last_minute=int(event_requests + held_requests),
            tokens_last_minute=int(event_tokens + held_tokens),
            budget_used=int(event_budget + held_budget),
            reserved_tokens=int(reserved),
            oldest_in_window=oldest,
        )

    def standing(self, api_key_id: str, now: float) -> Standing:
        limits = self.limits_of(api_key_id)
        return Standing(limits, self._spent(limits, now) if limits.any else Spent(), now)

    def reserve(
        self, source: str, event_id: str, api_key_id: str, tokens: int, lease_seconds: float, now: float
    ) -> tuple[Decision, Standing]:
        """Takes a reservation if it fits every limit of the key, all in one transaction. A key without
        limits is granted without a reservation; a reservation already taken (a retry) is granted again."""
        with self._transaction():
            self._renew(source, lease_seconds, now)
            self._lock_key(api_key_id)
            limits = self.limits_of(api_key_id)
            if not limits.any:
                return Decision(True), Standing(limits, Spent(), now)
            taken = self._rows(
                "SELECT 1 FROM reservations WHERE source = ? AND event_id = ?", (source, event_id)
            )
            spent = self._spent(limits, now)
            if taken:
                return Decision(True), Standing(limits, spent, now)
            decision = decide(limits, spent, tokens)
            if decision.granted:
                self._rows(
                    "INSERT INTO reservations (source, event_id, api_key_id, reserved_tokens, settled_tokens, created_at)"
                    " VALUES (?, ?, ?, ?, NULL, ?)",
                    (source, event_id, api_key_id, tokens, now),
                )
                spent = spent.plus(tokens, now)
        return decision, Standing(limits, spent, now)

    def settle(self, source: str, event_id: str, tokens: int) -> None:
        """The request's exact usage replaces what it reserved (until its event replaces the reservation)."""
        with self._transaction():
            self._rows(
                "UPDATE reservations SET settled_tokens = ? WHERE source = ? AND event_id = ?", (tokens, source, event_id)
            )

    def renew(self, source: str, lease_seconds: float, now: float) -> None:
        with self._transaction():
            self._renew(source, lease_seconds, now)

    def _renew(self, source: str, lease_seconds: float, now: float) -> None:
        self._rows(
            "INSERT INTO reservation_holders (source, lease_until) VALUES (?, ?)"
            " ON CONFLICT (source) DO UPDATE SET lease_until = excluded.lease_until",
            (source, now + lease_seconds),
        )

    def _prune_cells(self, now: float) -> None:
        if now - self._last_prune < _CELL_KEEP_SECONDS / 2:
            return
        self._last_prune = now
        with self._transaction():
            self._rows("DELETE FROM throughput_cells WHERE second < ?", (oldest_cell(now) - _CELL_KEEP_SECONDS,))
            self._rows("DELETE FROM reservations WHERE created_at < ?", (now - _RESERVATION_KEEP_SECONDS,))

    def model_totals(self) -> dict[str, ModelTotals]:
        sums = ", ".join(_INT.format(f) for f in TOTAL_FIELDS if f != "generation_seconds")
        rows = self._rows(
            f"SELECT model, {sums}, SUM(generation_seconds), {_INT.format('duplicated')}"
            " FROM counters GROUP BY model ORDER BY model"
        )
        return {row[0]: ModelTotals(Totals(*row[1:-1]), row[-1]) for row in rows}

    def rejections(self) -> dict[str, int]:
        return dict(self._rows(f"SELECT kind, {_INT.format('count')} FROM rejection_counts GROUP BY kind"))

    def throughput_cells(self, now: float) -> dict[str, Cells]:
        """Every replica's cells that a window ending at `now` can reach, by model."""
        cells: dict[str, Cells] = defaultdict(dict)
        rows = self._rows(
            "SELECT model, second, SUM(tokens) FROM throughput_cells WHERE second >= ? GROUP BY model, second",
            (oldest_cell(now),),
        )
        for model, second, tokens in rows:
            cells[model][second] = tokens
        return dict(cells)

    def _where(self, query: Query) -> tuple[str, list[object]]:
        clauses, params = [], []
        if query.start is not None:
            clauses.append("occurred_at >= ?")
            params.append(query.start)
        if query.end is not None:
            clauses.append("occurred_at < ?")
            params.append(query.end)
        if query.model:
            clauses.append("model = ?")
            params.append(query.model)
        if query.api_key_id:
            clauses.append("api_key_id = ?")
            params.append(query.api_key_id)
        if query.model_name:
            clauses.append(f"{_GROUP_COLUMNS['model_name']} = ?")
            params.append(query.model_name)
        if query.caller:
            clauses.append("caller = ?")
            params.append(query.caller)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def totals(self, query: Query, group_by: tuple[str, ...]) -> list[tuple[dict[str, str], Totals]]:
        """group_by: any of "model", "model_name", "api_key_id", "caller"."""
        where, params = self._where(query)
        keys = ", ".join(f"{_GROUP_COLUMNS[key]} AS {key}" for key in group_by)
        select = f"SELECT {keys + ', ' if keys else ''}{_SUMS} FROM events{where}"
        if keys:
            # By position: a column named like an alias would win over the alias in GROUP BY.
            positions = ", ".join(str(i + 1) for i in range(len(group_by)))
            select += f" GROUP BY {positions} ORDER BY {positions}"
        out = []
        for row in self._rows(select, params):
            labels = dict(zip(group_by, row[: len(group_by)]))
            sums = [v or 0 for v in row[len(group_by) :]]
            if sums[0]:
                out.append((labels, Totals(*sums)))
        return out

    def series(self, query: Query, bucket_seconds: int) -> list[tuple[float, Totals]]:
        where, params = self._where(query)
        rows = self._rows(
            f"SELECT {self.bucket_sql} AS bucket, {_SUMS} FROM events{where} GROUP BY 1 ORDER BY 1",
            [bucket_seconds, bucket_seconds, *params],
        )
        return [(float(row[0]), Totals(*[v or 0 for v in row[1:]])) for row in rows]

