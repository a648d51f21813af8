"""The SQL of a range read: one statement over the range's pieces (rollup rows and the raw events at its
edges, services.metering.rollups), so the whole answer comes from one snapshot of the database."""

from __future__ import annotations

from dataclasses import dataclass

from services.metering.rollups import TOTAL_FIELDS, Piece

# Each event's share of a rollup's sums, in TOTAL_FIELDS' order.
EVENT_VALUES = (
    "1",
    "CASE WHEN status = 'ok' THEN 1 ELSE 0 END",
    "CASE WHEN status = 'abort' THEN 1 ELSE 0 END",
    "CASE WHEN status = 'error' THEN 1 ELSE 0 END",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "COALESCE(cost_micro, 0)",
    "CASE WHEN cost_micro IS NULL THEN 1 ELSE 0 END",
    "generation_seconds",
)
# The registered model name of events stored before it was recorded is their served model's (rollups hold
# the resolved name).
_EVENT_COLUMN = {"model_name": "CASE WHEN model_name = '' THEN model ELSE model_name END"}
_SUMS = ", ".join(
    [f"CAST(SUM({name}) AS BIGINT)" for name in TOTAL_FIELDS if name != "generation_seconds"]
    + ["SUM(generation_seconds)"]
)


@dataclass(frozen=True)
class Query:
    """A time range by occurred_at (None: unbounded) and equality filters (empty matches all)."""

    start: float | None = None
    end: float | None = None
    model: str = ""
    api_key_id: str = ""
    model_name: str = ""
    caller: str = ""


@dataclass(frozen=True)
class Label:
    """A column of the answer: a grouping column, or (for a series) the bucket: the rollup's own for
    whole buckets, a given start for the pieces of a bucket the range covers only in part."""

    column: str
    fixed_bucket: int | None = None


def _expression(label: Label, events: bool) -> tuple[str, list[object]]:
    if label.column == "bucket":
        if label.fixed_bucket is None:
            return "bucket", []
        return "CAST(? AS BIGINT)", [label.fixed_bucket]
    return (_EVENT_COLUMN.get(label.column, label.column) if events else label.column), []


def piece_select(piece: Piece, labels: list[Label], query: Query, rollups: str) -> tuple[str, list[object]]:
    """rollups: the table whole buckets come from (usage_rollups, or model_rollups when the labels and
    filters name only the model and its registered name)."""
    events = piece.width == 0
    params: list[object] = []
    columns = []
    for i, label in enumerate(labels):
        sql, more = _expression(label, events)
        columns.append(f"{sql} AS g{i}")
        params += more
    values = EVENT_VALUES if events else TOTAL_FIELDS
    columns += [f"{value} AS {name}" for value, name in zip(values, TOTAL_FIELDS)]
    time_column = "occurred_at" if events else "bucket"
    clauses = [] if events else ["width = ?"]
    params += [] if events else [piece.width]
    if piece.start is not None:
        clauses.append(f"{time_column} >= ?")
        params.append(piece.start)
    if piece.end is not None:
        clauses.append(f"{time_column} < ?")
        params.append(piece.end)
    for name in ("model", "api_key_id", "model_name", "caller"):
        if value := getattr(query, name):
            clauses.append(f"{_EVENT_COLUMN.get(name, name) if events else name} = ?")
            params.append(value)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT {', '.join(columns)} FROM {'events' if events else rollups}{where}", params


def range_select(parts: list[tuple[list[Label], list[Piece]]], query: Query, rollups: str) -> tuple[str, list[object]]:
    """Sums of every part's pieces, grouped by the labels (the same number in every part), in label order."""
    selects, params = [], []
    for labels, part in parts:
        for piece in part:
            sql, more = piece_select(piece, labels, query, rollups)
            selects.append(sql)
            params += more
    count = len(parts[0][0])
    names = ", ".join(f"g{i}" for i in range(count))
    sql = f"SELECT {names + ', ' if names else ''}{_SUMS} FROM ({' UNION ALL '.join(selects)}) AS pieces"
    if count:
        positions = ", ".join(str(i + 1) for i in range(count))
        sql += f" GROUP BY {positions} ORDER BY {positions}"
    return sql, params
