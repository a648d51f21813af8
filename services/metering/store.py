"""What the usage stores share: the running totals, the queries, and one commit's SQL (a key's limits and
reservations are services.metering.reservations). The two stores
(SQLite, the embedded default; PostgreSQL, for several replicas) differ only in how they connect, take
a write transaction and insert the events that are new; both apply the same numbered migrations
(services/metering/migrations/). Not thread-safe: one thread uses a store."""

from __future__ import annotations

import time
from abc import abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.metering.events import UsageEvent
from services.metering.reservations import Reservations
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
    "source",
    "event_id",
    "occurred_at",
    "received_at",
    "model",
    "api_key_id",
    "endpoint",
    "streamed",
    "finish_reason",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "ttft_seconds",
    "generation_seconds",
    "request_seconds",
    "trace_id",
    "model_name",
    "caller",
)
_INT = "CAST(SUM({}) AS BIGINT)"
_SUMS = ", ".join(
    (
        "COUNT(*)",
        *(_INT.format(f"CASE WHEN status = '{s}' THEN 1 ELSE 0 END") for s in ("ok", "abort", "error")),
        *(_INT.format(c) for c in ("prompt_tokens", "completion_tokens", "cached_tokens")),
        "SUM(generation_seconds)",
    )
)
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


def event_row(e: UsageEvent, received_at: float) -> tuple:
    return (
        e.source,
        e.event_id,
        e.occurred_at,
        received_at,
        e.model,
        e.api_key_id,
        e.endpoint,
        int(e.streamed),
        e.finish_reason,
        e.status,
        e.prompt_tokens,
        e.completion_tokens,
        e.cached_tokens,
        e.time_to_first_token_seconds,
        e.generation_seconds,
        e.request_seconds,
        e.trace_id,
        e.model_name or e.model,
        e.caller,
    )


class UsageStore(Reservations):
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
            self._many(
                _COUNTER_UPSERT,
                [
                    (model, self.writer, *by_model.get(model, Totals()).values(), duplicated.get(model, 0))
                    for model in sorted(set(by_model) | set(duplicated))
                ],
            )
            self._many(_REJECTION_UPSERT, [(kind, self.writer, count) for kind, count in sorted(rejected.items())])
            self._many(
                _CELL_UPSERT,
                [
                    (model, second, self.writer, tokens)
                    for model in sorted(cells)
                    for second, tokens in sorted(cells[model].items())
                ],
            )
            # The event now counts against its key: the reservation it replaces is gone (same transaction).
            self._many("DELETE FROM reservations WHERE source = ? AND event_id = ?", sorted(candidates))
        self._prune(received_at)
        return Commit(inserted, dict(duplicated))

    def _prune(self, now: float) -> None:
        if now - self._last_prune < _CELL_KEEP_SECONDS / 2:
            return
        self._last_prune = now
        with self._transaction():
            self._rows("DELETE FROM throughput_cells WHERE second < ?", (oldest_cell(now) - _CELL_KEEP_SECONDS,))
            self._prune_reservations(now)

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
