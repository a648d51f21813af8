"""What the usage stores share: the running totals, the queries, and one commit's SQL (a key's limits and
reservations are services.metering.reservations). The two stores
(SQLite, the embedded default; PostgreSQL, for several replicas) differ only in how they connect, take
a write transaction and insert the events that are new; both apply the same numbered migrations
(services/metering/migrations/). Not thread-safe: one thread uses a store."""

from __future__ import annotations

import time
from abc import abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson

from services.metering.budget_alerts import AlertStore
from services.metering.events import UsageEvent
from services.metering.export_rows import ExportReads
from services.metering.key_store import KeyStore
from services.metering.limits import period_start
from services.metering.outbox_store import CLOUDEVENTS
from services.metering.price_store import PriceStore
from services.metering.range_sql import EVENT_VALUES, Label, Query, range_select
from services.metering.reconcile import Reconciliation
from services.metering.rerating import Reratings
from services.metering.reservations import Reservations
from services.metering.rollups import (
    MINUTE,
    PERIODS,
    PRUNED_WIDTH,
    TOTAL_FIELDS,
    WIDTHS,
    Additions,
    Totals,
    additions,
    ceil_to,
    pieces,
    series_pieces,
)
from services.metering.schema import MIGRATIONS
from services.metering.throughput import Cells, oldest_cell, spread

_T = TypeVar("_T")


class StoreUnavailable(RuntimeError):
    """The database cannot be reached now; the caller may retry (a gRPC UNAVAILABLE)."""


@dataclass
class ModelTotals:
    totals: Totals = field(default_factory=Totals)
    duplicated: int = 0


@dataclass
class Commit:
    """What one write transaction changed: for the acks and this replica's metrics."""

    inserted: list[bool]
    duplicated_by_model: dict[str, int]


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
    "cost_micro",
    "price_id",
    "images",
    "embedding_inputs",
)
_INT = "CAST(SUM({}) AS BIGINT)"
# The migration that adds the rollups; applying it fills them from the stored events.
_ROLLUPS_MIGRATION = 4
_COUNTER_UPSERT = (
    f"INSERT INTO counters (model, writer, {', '.join(TOTAL_FIELDS)}, duplicated)"
    f" VALUES ({','.join('?' * (len(TOTAL_FIELDS) + 3))}) ON CONFLICT (model, writer) DO UPDATE SET "
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


def _rollup_upsert(table: str, key: str) -> str:
    return (
        f"INSERT INTO {table} ({key}, {', '.join(TOTAL_FIELDS)})"
        f" VALUES ({','.join('?' * (key.count(',') + 1 + len(TOTAL_FIELDS)))}) ON CONFLICT ({key}) DO UPDATE SET "
        + ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in TOTAL_FIELDS)
    )


_ROLLUP_UPSERT = _rollup_upsert("usage_rollups", "width, bucket, api_key_id, model, model_name, caller, writer")
_MODEL_ROLLUP_UPSERT = _rollup_upsert("model_rollups", "width, bucket, model, model_name, writer")
# Reads that neither filter nor group by these take the rollups per model (model_rollups).
_KEY_COLUMNS = {"api_key_id", "caller"}
_SPEND_UPSERT = (
    "INSERT INTO key_spend (api_key_id, period, start, writer, requests, tokens, cost_micro) VALUES (?,?,?,?,?,?,?)"
    " ON CONFLICT (api_key_id, period, start, writer) DO UPDATE SET"
    " requests = key_spend.requests + excluded.requests, tokens = key_spend.tokens + excluded.tokens,"
    " cost_micro = key_spend.cost_micro + excluded.cost_micro"
)
# Running spend rows no reservation reads any more: per-second cells past the minute window, days and
# months past (their usage stays in the rollups).
_SPEND_KEEP_SECONDS = {"second": 120.0, "day": 2 * 86400.0, "month": 62 * 86400.0}
# Cells this far behind the oldest a window reads are deleted, in their own statement: no commit
# still adds to them, so the delete never waits on one.
_CELL_KEEP_SECONDS = 120


def event_row(e: UsageEvent, received_at: float, priced: tuple[int | None, str] | None = None) -> tuple:
    """The stored row; `priced`: the (cost, price id) metering priced it at (else the event's own)."""
    cost, price_id = priced or (e.cost_micro, e.price_id)
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
        cost,
        price_id,
        e.images,
        e.embedding_inputs,
    )


class UsageStore(KeyStore, PriceStore, Reservations, Reconciliation, Reratings, AlertStore, ExportReads):
    """`writer` keys this process's rows of the running totals (see migration 0002)."""

    # Whether other processes may write the same database (PostgreSQL): then the Prometheus counters
    # of one replica count only its own ingest, and totals come from the database.
    shared: bool = False
    # SQL of the start of the bucket a time column (format field) falls in, from a width parameter (twice).
    bucket_sql: str = ""

    def __init__(self, writer: str) -> None:
        self.writer = writer
        self._last_prune = 0.0
        # What the commit path reads of keys and prices, kept while the change number stays the same.
        self._version_cache: tuple[int, dict[str, Any]] = (-1, {})

    def _cached(self, name: str) -> Any:
        return self._version_cache[1].get(name)

    def _cache(self, name: str, value: _T) -> _T:
        self._version_cache[1][name] = value
        return value

    def _follow_changes(self) -> None:
        """Inside a commit: drops what was cached of keys and prices if anything changed since (every
        change of a key, team, organisation, limit or price takes the next number)."""
        version = self.key_version()
        if version != self._version_cache[0]:
            self._version_cache = (version, {})

    @abstractmethod
    def close(self) -> None: ...

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
                if migration.version == _ROLLUPS_MIGRATION:
                    self._backfill_rollups(time.time())
                self._rows(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", (migration.version, migration.name, time.time())
                )

    def _backfill_rollups(self, now: float) -> None:
        """Inside the migration that adds them: the rollups and the keys' running spend of the events
        already stored, as their commits would have written them."""
        name = "CASE WHEN model_name = '' THEN model ELSE model_name END"
        # The columns as migration 4 made them (later migrations add more, and fill them themselves).
        fields = [f for f in TOTAL_FIELDS if f not in ("cost_micro", "unpriced_requests")]
        sums = ", ".join(_INT.format(EVENT_VALUES[TOTAL_FIELDS.index(f)]) for f in fields[:-1])
        sums_of_rows = ", ".join(_INT.format(f) for f in fields[:-1])
        columns = ", ".join(fields)
        for width in WIDTHS:
            self._rows(
                f"INSERT INTO usage_rollups (width, bucket, api_key_id, model, model_name, caller, writer, {columns})"
                f" SELECT ?, {self.bucket_sql.format('occurred_at')}, api_key_id, model,"
                f" {name}, caller, '', {sums}, SUM(generation_seconds) FROM events GROUP BY 2, 3, 4, 5, 6",
                (width, width, width),
            )
            self._rows(
                f"INSERT INTO model_rollups (width, bucket, model, model_name, writer, {columns})"
                f" SELECT width, bucket, model, model_name, '', {sums_of_rows},"
                " SUM(generation_seconds) FROM usage_rollups WHERE width = ? GROUP BY 1, 2, 3, 4",
                (width,),
            )
        spent = "COUNT(*), SUM(prompt_tokens + completion_tokens) FROM events WHERE api_key_id <> ''"
        for period in PERIODS:
            start = int(period_start(period, now))
            self._rows(
                f"INSERT INTO key_spend SELECT api_key_id, ?, ?, '', {spent} AND received_at >= ? GROUP BY api_key_id",
                (period, start, start),
            )
        self._rows(
            f"INSERT INTO key_spend SELECT api_key_id, 'second', {self.bucket_sql.format('received_at')}, '',"
            f" {spent} AND received_at >= ? GROUP BY api_key_id, 3",
            (1, 1, now - _SPEND_KEEP_SECONDS["second"]),
        )

    def schema_version(self) -> int:
        return self._rows("SELECT MAX(version) FROM schema_migrations")[0][0] or 0

    def commit(self, events: list[UsageEvent], received_at: float, rejected: dict[str, int]) -> Commit:
        """Prices the events and inserts them (a (source, event_id) seen before is a duplicate), and adds to
        the running totals, rollups, keys' running spend, rejections and throughput cells, and (when pushed)
        names the new events in the outbox, all in one transaction."""
        with self._transaction():
            self._follow_changes()
            # Priced first: the stored row carries its cost.
            costs = self._priced(events)
            candidates: dict[tuple[str, str], tuple] = {}
            for e in events:
                key = (e.source, e.event_id)
                if key not in candidates:
                    candidates[key] = event_row(e, received_at, costs.get(key))
            new = self._insert_new([candidates[key] for key in sorted(candidates)])
            if new and self._delivering(CLOUDEVENTS):
                # orjson, unsorted: a sorted json.dumps cost a tenth of the commit (the deliverer sorts).
                self._enqueue(CLOUDEVENTS, orjson.dumps(list(new)).decode(), received_at)
            inserted: list[bool] = []
            duplicated: dict[str, int] = defaultdict(int)
            cells: dict[str, Cells] = defaultdict(dict)
            fresh_events: list[UsageEvent] = []
            for e in events:
                key = (e.source, e.event_id)
                fresh = key in new
                inserted.append(fresh)
                if fresh:
                    new.discard(key)
                    fresh_events.append(e)
                    spread(cells[e.model], e.occurred_at, e.generation_seconds, e.completion_tokens, received_at)
                else:
                    duplicated[e.model] += 1
            added = additions(fresh_events, received_at, self.memberships(e.api_key_id for e in fresh_events), costs)
            by_model = added.per_model()
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
            self._add(added)
            # The event now counts against its key: the reservation it replaces is gone (same transaction).
            self._many("DELETE FROM reservations WHERE source = ? AND event_id = ?", sorted(candidates))
        self._prune(received_at)
        return Commit(inserted, dict(duplicated))

    def _add(self, added: Additions) -> None:
        self._many(
            _ROLLUP_UPSERT,
            [(*key, self.writer, *totals.values()) for key, totals in sorted(added.rollups.items())],
        )
        self._many(
            _MODEL_ROLLUP_UPSERT,
            [(*key, self.writer, *totals.values()) for key, totals in sorted(added.model_rollups.items())],
        )
        self._many(
            _SPEND_UPSERT,
            [(key, period, start, self.writer, *sums) for (key, period, start), sums in sorted(added.spend.items())],
        )

    def _prune(self, now: float) -> None:
        if now - self._last_prune < _CELL_KEEP_SECONDS / 2:
            return
        self._last_prune = now
        with self._transaction():
            self._rows("DELETE FROM throughput_cells WHERE second < ?", (oldest_cell(now) - _CELL_KEEP_SECONDS,))
            self._rows(
                "DELETE FROM key_spend WHERE (period = 'second' AND start < ?) OR (period = 'day' AND start < ?)"
                " OR (period = 'month' AND start < ?)",
                tuple(now - _SPEND_KEEP_SECONDS[p] for p in ("second", "day", "month")),
            )
            self._prune_reservations(now)

    def prune_events(self, before: float, limit: int) -> int:
        """Deletes at most `limit` of the oldest events that occurred before `before` (their usage stays
        in the rollups and counters); how many went."""
        with self._transaction():
            gone = self._rows(
                "DELETE FROM events WHERE (source, event_id) IN (SELECT source, event_id FROM events"
                " WHERE occurred_at < ? ORDER BY occurred_at LIMIT ?) RETURNING 1",
                (before, limit),
            )
        return len(gone)

    def prune_second_rollups(self, before: float, span: int = 60) -> int:
        """Deletes the one-second rollup rows of the oldest `span` seconds before `before` (they serve only
        the edges of ranges whose events are kept); how many went."""
        gone = 0
        with self._transaction():
            for table in ("usage_rollups", "model_rollups"):
                oldest = self._rows(f"SELECT MIN(bucket) FROM {table} WHERE width = ?", (PRUNED_WIDTH,))[0][0]
                if oldest is not None and oldest < before:
                    gone += len(
                        self._rows(
                            f"DELETE FROM {table} WHERE width = ? AND bucket < ? RETURNING 1",
                            (PRUNED_WIDTH, min(before, oldest + span)),
                        )
                    )
        return gone

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

    def totals(
        self, query: Query, group_by: tuple[str, ...], kept_since: float | None = None
    ) -> list[tuple[dict[str, str], Totals]]:
        """group_by: any of "model", "model_name", "api_key_id", "caller". kept_since: events that occurred
        before it may be pruned; a range edge before it is taken to the minute (see _kept)."""
        query = _kept(query, kept_since)
        labels = [Label(key) for key in group_by]
        parts = pieces(query.start, query.end)
        if not parts:
            return []
        out = []
        for row in self._rows(*range_select([(labels, parts)], query, _rollups_for(query, group_by))):
            sums = [v or 0 for v in row[len(group_by) :]]
            if sums[0]:
                out.append((dict(zip(group_by, row[: len(group_by)])), Totals(*sums)))
        return out

    def series(self, query: Query, bucket_seconds: int, kept_since: float | None = None) -> list[tuple[float, Totals]]:
        """bucket_seconds: one of the rollup widths (a minute, an hour, a UTC day)."""
        if bucket_seconds not in WIDTHS:
            raise ValueError(f"a series bucket is one of {WIDTHS} seconds")
        query = _kept(query, kept_since)
        parts = [
            ([Label("bucket", fixed)], part)
            for fixed, part in series_pieces(query.start, query.end, bucket_seconds)
            if part
        ]
        if not parts:
            return []
        rows = self._rows(*range_select(parts, query, _rollups_for(query, ())))
        return [(float(row[0]), Totals(*[v or 0 for v in row[1:]])) for row in rows if row[1]]


def _rollups_for(query: Query, group_by: tuple[str, ...]) -> str:
    if _KEY_COLUMNS & set(group_by) or query.api_key_id or query.caller:
        return "usage_rollups"
    return "model_rollups"


def _kept(query: Query, kept_since: float | None) -> Query:
    """Before `kept_since` only the rollups are sure to hold an event, so an edge there is taken up to
    its minute: a minute counts in the range when its start does."""
    if kept_since is None:
        return query
    start, end = query.start, query.end
    if start is not None and start < kept_since:
        start = ceil_to(start, MINUTE)
    if end is not None and end < kept_since:
        end = ceil_to(end, MINUTE)
    return replace(query, start=start, end=end)
