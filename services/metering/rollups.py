"""Usage summed by time bucket, written with the events so that reads never scan history.

Each committed event adds to four rollup rows (its second, minute, hour and UTC day by occurred_at, per API key,
model, registered model name and caller; and the same per model and name alone, for reads that neither
filter nor group by key or caller) and to its key's running spend (its second, UTC day, UTC month
and all time by received_at, the clock budgets are counted on). A range read takes whole days from the
day rows, the hours, minutes and seconds left at its edges from the hour, minute and second rows, and only
the fraction of a second left over at each edge from the raw events: at most 2 × (24 + 60 + 60) rollup
rows per group and two seconds of events, whatever the history. Second rows are pruned with the raw
events (services.metering.store); before the retention time a range's edges are taken to the minute."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from services.metering.accounts import Membership
from services.metering.events import UsageEvent
from services.metering.limits import period_start

SECOND, MINUTE, HOUR, DAY = 1, 60, 3600, 86400
WIDTHS = (DAY, HOUR, MINUTE, SECOND)
# Rows of this width are pruned with the raw events (they only serve a range's edges); wider ones stay.
PRUNED_WIDTH = SECOND
# The rows of a rollup besides its sums, in the table's order.
GROUP_COLUMNS = ("api_key_id", "model", "model_name", "caller")
PERIODS = ("total", "day", "month")


def bucket(t: float, width: int) -> int:
    """The start of the bucket t falls in, in integers from t's whole second (no rounding of t / width: the
    stores compute the same, services.metering.store's bucket_sql)."""
    return math.floor(t) // width * width


def ceil_to(t: float, width: int) -> int:
    return -(-math.ceil(t) // width) * width


@dataclass(frozen=True)
class Piece:
    """Part of a range: rollup rows of `width` with start in [start, end), or raw events (width 0) with
    occurred_at in [start, end). None is unbounded."""

    width: int
    start: float | None
    end: float | None


def pieces(start: float | None, end: float | None, widths: tuple[int, ...] = WIDTHS) -> list[Piece]:
    """[start, end) as whole buckets of the widest width that fits, then narrower ones at the edges,
    then raw events for what is left. Every moment of the range is in exactly one piece."""
    if start is not None and end is not None and start >= end:
        return []
    if not widths:
        return [Piece(0, start, end)]
    width = widths[0]
    first = None if start is None else ceil_to(start, width)
    last = None if end is None else bucket(end, width)
    if first is not None and last is not None and first >= last:
        return pieces(start, end, widths[1:])
    out = [Piece(width, first, last)]
    if start is not None and first is not None and start < first:
        out += pieces(start, first, widths[1:])
    if end is not None and last is not None and last < end:
        out += pieces(last, end, widths[1:])
    return out


def series_pieces(start: float | None, end: float | None, width: int) -> list[tuple[int | None, list[Piece]]]:
    """A series by `width`: (None, whole buckets read as rows of that width) and, for a bucket the range
    only partly covers at either edge, (its start, the pieces of the covered part)."""
    if start is not None and end is not None and start >= end:
        return []
    first = None if start is None else ceil_to(start, width)
    last = None if end is None else bucket(end, width)
    narrower = tuple(w for w in WIDTHS if w < width)
    if first is not None and last is not None and first > last:
        # Start and end inside one bucket.
        return [(bucket(start, width), pieces(start, end, narrower))]
    out: list[tuple[int | None, list[Piece]]] = [(None, [Piece(width, first, last)])]
    if start is not None and first is not None and start < first:
        out.append((bucket(start, width), pieces(start, first, narrower)))
    if end is not None and last is not None and last < end:
        out.append((last, pieces(last, end, narrower)))
    return out


TOTAL_FIELDS = (
    "requests",
    "ok_requests",
    "aborted_requests",
    "failed_requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_micro",
    "unpriced_requests",
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
    # Micro-units of the priced events; the events no price was in force for are counted apart.
    cost_micro: int = 0
    unpriced_requests: int = 0
    generation_seconds: float = 0.0

    def add_event(self, e: UsageEvent, cost: int | None = None) -> None:
        """cost: what metering priced the event at (None: the event's own cost_micro)."""
        self.requests += 1
        if e.status == "ok":
            self.ok_requests += 1
        elif e.status == "abort":
            self.aborted_requests += 1
        else:
            self.failed_requests += 1
        self.prompt_tokens += e.prompt_tokens
        self.completion_tokens += e.completion_tokens
        self.cached_tokens += e.cached_tokens
        cost = e.cost_micro if cost is None else cost
        if cost is None:
            self.unpriced_requests += 1
        else:
            self.cost_micro += cost
        self.generation_seconds += e.generation_seconds

    def values(self) -> tuple[int | float, ...]:
        """In TOTAL_FIELDS' order (written out: this runs for every rollup row of every commit)."""
        return (
            self.requests,
            self.ok_requests,
            self.aborted_requests,
            self.failed_requests,
            self.prompt_tokens,
            self.completion_tokens,
            self.cached_tokens,
            self.cost_micro,
            self.unpriced_requests,
            self.generation_seconds,
        )

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.ok_requests += other.ok_requests
        self.aborted_requests += other.aborted_requests
        self.failed_requests += other.failed_requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_micro += other.cost_micro
        self.unpriced_requests += other.unpriced_requests
        self.generation_seconds += other.generation_seconds


RollupKey = tuple[int, int, str, str, str, str]
ModelRollupKey = tuple[int, int, str, str]
SpendKey = tuple[str, str, int]


@dataclass
class Additions:
    """What one commit adds to the rollups and the keys' running spend."""

    # (width, bucket, key, model, name, caller) and, for reads by model alone, (width, bucket, model, name).
    rollups: dict[RollupKey, Totals]
    model_rollups: dict[ModelRollupKey, Totals]
    # (key, period, period start) -> [requests, tokens, cost]; period "second" is the per-minute window's cell.
    spend: dict[SpendKey, list[int]]

    def per_model(self) -> dict[str, Totals]:
        """The commit's totals per model (for the running counters), from its day rows: each event is in one."""
        out: dict[str, Totals] = defaultdict(Totals)
        for (width, _, model, _), totals in self.model_rollups.items():
            if width == DAY:
                out[model].add(totals)
        return dict(out)


def additions(
    events: list[UsageEvent],
    received_at: float,
    memberships: Mapping[str, Membership] | None = None,
    costs: Mapping[tuple[str, str], tuple[int, str]] | None = None,
) -> Additions:
    """memberships: where each key sits (absent: alone, UTC); its spend also goes to its team and
    organisation, with day and month periods in the organisation's time zone. costs: what metering priced
    events at, by (source, event id) (absent: the event's own cost_micro)."""
    # Per event only its second's row and its key's spend are touched; minutes, hours and days are summed
    # from the seconds, and every period of a key's spend from its one sum (received_at is one moment).
    seconds: dict[RollupKey, Totals] = defaultdict(Totals)
    by_key: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for e in events:
        group = (e.api_key_id, e.model, e.model_name or e.model, e.caller)
        priced = costs.get((e.source, e.event_id)) if costs else None
        cost = e.cost_micro if priced is None else priced[0]
        seconds[(SECOND, math.floor(e.occurred_at), *group)].add_event(e, cost)
        if e.api_key_id:
            spent = by_key[e.api_key_id]
            spent[0] += 1
            spent[1] += e.prompt_tokens + e.completion_tokens
            spent[2] += cost or 0
    rollups = dict(seconds)
    for width in (MINUTE, HOUR, DAY):
        wider: dict[RollupKey, Totals] = defaultdict(Totals)
        for (_, start, *group), totals in seconds.items():
            wider[(width, bucket(start, width), *group)].add(totals)
        rollups.update(wider)
    by_model: dict[ModelRollupKey, Totals] = defaultdict(Totals)
    for (width, start, _, model, name, _), totals in rollups.items():
        by_model[width, start, model, name].add(totals)
    spend: dict[SpendKey, list[int]] = {}
    zones: dict[str, list[tuple[str, int]]] = {}
    for key, (requests, tokens, cost) in by_key.items():
        member = (memberships or {}).get(key) or Membership(key)
        starts = zones.get(member.time_zone)
        if starts is None:
            starts = [(p, int(period_start(p, received_at, member.time_zone))) for p in PERIODS]
            starts = zones[member.time_zone] = [*starts, ("second", math.floor(received_at))]
        for subject in member.subjects:
            for period, start in starts:
                cell = spend.get((subject, period, start))
                if cell is None:
                    spend[subject, period, start] = [requests, tokens, cost]
                else:
                    cell[0] += requests
                    cell[1] += tokens
                    cell[2] += cost
    return Additions(rollups, dict(by_model), spend)
