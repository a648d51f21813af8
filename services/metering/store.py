"""The SQLite (WAL) usage store. Events and the per-model running totals are written in one
transaction, so totals reload at start exactly as committed. Not thread-safe: one thread uses it."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from services.metering.events import UsageEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    occurred_at REAL NOT NULL,
    received_at REAL NOT NULL,
    model TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    streamed INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    status TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    ttft_seconds REAL NOT NULL,
    generation_seconds REAL NOT NULL,
    request_seconds REAL NOT NULL,
    trace_id TEXT NOT NULL,
    model_name TEXT NOT NULL DEFAULT '',
    caller TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (source, event_id)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (occurred_at);
CREATE TABLE IF NOT EXISTS model_totals (
    model TEXT PRIMARY KEY,
    requests INTEGER NOT NULL DEFAULT 0,
    ok_requests INTEGER NOT NULL DEFAULT 0,
    aborted_requests INTEGER NOT NULL DEFAULT 0,
    failed_requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    generation_seconds REAL NOT NULL DEFAULT 0,
    duplicated INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rejections (
    kind TEXT PRIMARY KEY,
    count INTEGER NOT NULL DEFAULT 0
);
"""

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

    def add(self, other: Totals) -> None:
        for name in TOTAL_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class ModelTotals:
    totals: Totals = field(default_factory=Totals)
    duplicated: int = 0


@dataclass
class Commit:
    """What one write transaction changed: for the in-memory counters and metrics."""

    inserted: list[bool]
    by_model: dict[str, Totals]
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


class UsageStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # An acknowledged event must survive power loss, not just a killed process.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if "model_name" not in columns:
            # A store made before events carried the registered model name.
            self._db.execute("ALTER TABLE events ADD COLUMN model_name TEXT NOT NULL DEFAULT ''")
        if "caller" not in columns:
            # A store made before the engine metered internal callers.
            self._db.execute("ALTER TABLE events ADD COLUMN caller TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        self._db.close()

    def commit(self, events: list[UsageEvent], received_at: float, rejected: dict[str, int]) -> Commit:
        """Inserts the events (a (source, event_id) seen before is a duplicate) and counts rejections,
        all in one transaction."""
        inserted: list[bool] = []
        by_model: dict[str, Totals] = defaultdict(Totals)
        duplicated: dict[str, int] = defaultdict(int)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # Which are new is decided first, then the new ones go in with one executemany: a statement
            # per row cost more than the rest of the commit together at batch 1000.
            seen = self._existing(events)
            rows = []
            for e in events:
                key = (e.source, e.event_id)
                fresh = key not in seen
                inserted.append(fresh)
                if fresh:
                    seen.add(key)
                    by_model[e.model].add_event(e)
                    rows.append((
                        e.source, e.event_id, e.occurred_at, received_at, e.model, e.api_key_id, e.endpoint,
                        int(e.streamed), e.finish_reason, e.status, e.prompt_tokens, e.completion_tokens,
                        e.cached_tokens, e.time_to_first_token_seconds, e.generation_seconds, e.request_seconds,
                        e.trace_id, e.model_name or e.model, e.caller,
                    ))
                else:
                    duplicated[e.model] += 1
            db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            for model in set(by_model) | set(duplicated):
                t = by_model.get(model, Totals())
                db.execute(
                    "INSERT INTO model_totals (model, requests, ok_requests, aborted_requests, failed_requests,"
                    " prompt_tokens, completion_tokens, cached_tokens, generation_seconds, duplicated)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(model) DO UPDATE SET"
                    " requests = requests + excluded.requests,"
                    " ok_requests = ok_requests + excluded.ok_requests,"
                    " aborted_requests = aborted_requests + excluded.aborted_requests,"
                    " failed_requests = failed_requests + excluded.failed_requests,"
                    " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                    " completion_tokens = completion_tokens + excluded.completion_tokens,"
                    " cached_tokens = cached_tokens + excluded.cached_tokens,"
                    " generation_seconds = generation_seconds + excluded.generation_seconds,"
                    " duplicated = duplicated + excluded.duplicated",
                    (model, *(getattr(t, f) for f in TOTAL_FIELDS), duplicated.get(model, 0)),
                )
            for kind, count in rejected.items():
                db.execute(
                    "INSERT INTO rejections VALUES (?, ?) ON CONFLICT(kind) DO UPDATE SET count = count + excluded.count",
                    (kind, count),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Commit(inserted, dict(by_model), dict(duplicated))

    def _existing(self, events: list[UsageEvent], chunk: int = 500) -> set[tuple[str, str]]:
        """The (source, event id) pairs among `events` already stored."""
        by_source: dict[str, list[str]] = defaultdict(list)
        for e in events:
            by_source[e.source].append(e.event_id)
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

    def model_totals(self) -> dict[str, ModelTotals]:
        rows = self._db.execute(f"SELECT model, {', '.join(TOTAL_FIELDS)}, duplicated FROM model_totals").fetchall()
        return {row[0]: ModelTotals(Totals(*row[1:-1]), row[-1]) for row in rows}

    def rejections(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT kind, count FROM rejections").fetchall())

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

    _SUMS = (
        "COUNT(*), SUM(status = 'ok'), SUM(status = 'abort'), SUM(status = 'error'),"
        " SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), SUM(generation_seconds)"
    )

    def totals(self, query: Query, group_by: tuple[str, ...]) -> list[tuple[dict[str, str], Totals]]:
        """group_by: any of "model", "model_name", "api_key_id", "caller"."""
        where, params = self._where(query)
        keys = ", ".join(f"{_GROUP_COLUMNS[key]} AS {key}" for key in group_by)
        select = f"SELECT {keys + ', ' if keys else ''}{self._SUMS} FROM events{where}"
        if keys:
            # By position: a column named like an alias would win over the alias in GROUP BY.
            positions = ", ".join(str(i + 1) for i in range(len(group_by)))
            select += f" GROUP BY {positions} ORDER BY {positions}"
        rows = self._db.execute(select, params).fetchall()
        out = []
        for row in rows:
            labels = dict(zip(group_by, row[: len(group_by)]))
            sums = [v or 0 for v in row[len(group_by) :]]
            if sums[0]:
                out.append((labels, Totals(*sums)))
        return out

    def series(self, query: Query, bucket_seconds: int) -> list[tuple[float, Totals]]:
        where, params = self._where(query)
        rows = self._db.execute(
            f"SELECT CAST(occurred_at / ? AS INTEGER) * ? AS bucket, {self._SUMS} FROM events{where}"
            " GROUP BY bucket ORDER BY bucket",
            [bucket_seconds, bucket_seconds, *params],
        ).fetchall()
        return [(float(row[0]), Totals(*[v or 0 for v in row[1:]])) for row in rows]
