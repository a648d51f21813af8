"""The usage events as exports carry them: each stored event with its key's team and organisation (as
placed now) and its price's currency. The CloudEvents push reads the events one commit recorded; the file
export reads a period's, in pages ordered by (occurred_at, source, event_id)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from services.metering.store_primitives import StorePrimitives


class UsageRow(NamedTuple):
    source: str
    event_id: str
    occurred_at: float
    received_at: float
    model: str
    model_name: str
    api_key_id: str
    team_id: str
    org_id: str
    caller: str
    endpoint: str
    streamed: bool
    finish_reason: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    # Micro-units; None when no price covered the event (unpriced).
    cost_micro: int | None
    price_id: str
    currency: str
    trace_id: str
    images: int
    embedding_inputs: int


_SELECT = (
    "SELECT e.source, e.event_id, e.occurred_at, e.received_at, e.model,"
    " CASE WHEN e.model_name = '' THEN e.model ELSE e.model_name END, e.api_key_id,"
    " COALESCE(k.team_id, ''), COALESCE(k.org_id, ''), e.caller, e.endpoint, e.streamed, e.finish_reason,"
    " e.status, e.prompt_tokens, e.completion_tokens, e.cached_tokens, e.cost_micro, e.price_id,"
    " COALESCE(p.currency, ''), e.trace_id, e.images, e.embedding_inputs"
    " FROM events e LEFT JOIN api_keys k ON k.key_id = e.api_key_id LEFT JOIN prices p ON p.price_id = e.price_id"
)


def _row(values: Sequence) -> UsageRow:
    row = UsageRow(*values)
    return row._replace(streamed=bool(row.streamed))


class ExportReads(StorePrimitives):
    def usage_rows_of(self, keys: Sequence[tuple[str, str]], chunk: int = 500) -> list[UsageRow]:
        """The stored events of these (source, event_id) keys (a pruned one is missing)."""
        by_source: dict[str, list[str]] = defaultdict(list)
        for source, event_id in keys:
            by_source[source].append(event_id)
        out = []
        for source, ids in sorted(by_source.items()):
            for start in range(0, len(ids), chunk):
                part = ids[start : start + chunk]
                rows = self._rows(
                    f"{_SELECT} WHERE e.source = ? AND e.event_id IN ({','.join('?' * len(part))})", [source, *part]
                )
                out += [_row(r) for r in rows]
        return out

    def usage_rows_between(self, start: float, end: float, page: int = 5000) -> Iterator[UsageRow]:
        """Every stored event that occurred in [start, end), in (occurred_at, source, event_id) order."""
        after: tuple = (start, "", "")
        first = True
        while True:
            rows = self._rows(
                f"{_SELECT} WHERE e.occurred_at < ? AND (e.occurred_at {'>=' if first else '>'} ?"
                " OR (e.occurred_at = ? AND (e.source > ? OR (e.source = ? AND e.event_id > ?))))"
                " ORDER BY e.occurred_at, e.source, e.event_id LIMIT ?",
                (end, after[0], after[0], after[1], after[1], after[2], page),
            )
            for r in rows:
                yield _row(r)
            if len(rows) < page:
                return
            first = False
            after = (rows[-1][2], rows[-1][0], rows[-1][1])
