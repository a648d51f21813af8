"""The rollups and the keys' running spend against a recount from the events they came from, on both stores:
after a randomized run (duplicates, rejections, reservations, settles, two writers), across a month's end,
after pruning, and when an older store is migrated."""

from __future__ import annotations

import calendar
import random
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from services.metering.conftest import NOW, event
from services.metering.events import UsageEvent
from services.metering.limits import KeyLimits
from services.metering.metrics import MeteringMetrics
from services.metering.rollups import (
    DAY,
    HOUR,
    MINUTE,
    TOTAL_FIELDS,
    WIDTHS,
    Piece,
    bucket,
    pieces,
    series_pieces,
)
from services.metering.schema import MIGRATIONS
from services.metering.sqlite_store import SqliteStore
from services.metering.store import Query, Totals, UsageStore

LEASE = 30.0


def _covered(parts: list[Piece], t: float) -> int:
    """How many pieces hold the moment t (a rollup piece holds its buckets' whole width)."""
    count = 0
    for piece in parts:
        if piece.width == 0:
            inside = (piece.start is None or t >= piece.start) and (piece.end is None or t < piece.end)
        else:
            b = bucket(t, piece.width)
            inside = (piece.start is None or b >= piece.start) and (piece.end is None or b < piece.end)
        count += inside
    return count


def test_every_moment_of_a_range_is_in_exactly_one_piece() -> None:
    rng = random.Random(7)
    for _ in range(300):
        start = NOW + rng.uniform(-5 * DAY, 5 * DAY)
        end = start + rng.choice([0.5, 59, 61, 3599, 3601, DAY - 1, DAY + 1, 3 * DAY + 17.25, rng.uniform(0, 9 * DAY)])
        bounds = rng.choice([(start, end), (None, end), (start, None), (None, None)])
        parts = pieces(*bounds)
        # At most whole days, then two edges each of hours, minutes, seconds and raw events.
        assert len(parts) <= 9
        assert sum(p.width == 0 for p in parts) <= 2
        for _ in range(40):
            t = start + rng.uniform(-2 * DAY, (end - start) + 2 * DAY)
            inside = (bounds[0] is None or t >= bounds[0]) and (bounds[1] is None or t < bounds[1])
            assert _covered(parts, t) == int(inside), (bounds, t, parts)
        for width in WIDTHS:
            for fixed, part in series_pieces(*bounds, width):
                for _ in range(10):
                    t = start + rng.uniform(-DAY, (end - start) + DAY)
                    if fixed is not None and _covered(part, t):
                        assert bucket(t, width) == fixed


def _expected(events: list[UsageEvent], query: Query, group_by: tuple[str, ...]) -> dict[tuple, Totals]:
    out: dict[tuple, Totals] = defaultdict(Totals)
    for e in events:
        if query.start is not None and e.occurred_at < query.start:
            continue
        if query.end is not None and e.occurred_at >= query.end:
            continue
        labels = {
            "model": e.model,
            "api_key_id": e.api_key_id,
            "caller": e.caller,
            "model_name": e.model_name or e.model,
        }
        if query.api_key_id and e.api_key_id != query.api_key_id or query.model and e.model != query.model:
            continue
        out[tuple(labels[g] for g in group_by)].add_event(e)
    return dict(out)


def _same_totals(got: Totals, want: Totals) -> bool:
    ints = [f for f in vars(want) if f != "generation_seconds"]
    return [getattr(got, f) for f in ints] == [getattr(want, f) for f in ints] and got.generation_seconds == (
        pytest.approx(want.generation_seconds)
    )


def _random_event(rng: random.Random, i: int, now: float) -> UsageEvent:
    return event(
        i,
        source=rng.choice(["gw-1", "gw-2"]),
        occurred_at=now - rng.choice([rng.uniform(0, 120), rng.uniform(0, 3 * HOUR), rng.uniform(0, 6 * DAY)]),
        model=rng.choice(["m1", "m2", "m3"]),
        model_name=rng.choice(["", "", "family"]),
        api_key_id=rng.choice(["a", "b", "c", ""]),
        caller=rng.choice(["", "", "batch"]),
        status=rng.choice(["ok", "ok", "abort", "error"]),
        prompt_tokens=rng.randint(0, 500),
        completion_tokens=rng.randint(0, 200),
        cached_tokens=rng.randint(0, 5),
        generation_seconds=rng.uniform(0, 3),
    )


def test_a_randomized_run_recounts_exactly(open_store: Callable[[], UsageStore]) -> None:
    """Two writers (two stores on one database), duplicates, reservations settled or replaced by their
    event, commits spanning six days and a month's end: every read from the rollups and the running spend
    equals a recount from the events."""
    rng = random.Random(2026)
    writers = [open_store(), open_store()]
    writers[0].set_limits(KeyLimits("a", token_budget=10**12, budget_period="month"), NOW)
    # The last commits fall just after a month's start.
    month = calendar.timegm((2027, 3, 1, 0, 0, 0))
    times = sorted(
        [month - rng.uniform(1, 6 * DAY) for _ in range(35)] + [month + rng.uniform(0, 90) for _ in range(5)]
    )
    kept: dict[tuple[str, str], UsageEvent] = {}
    serial = 0
    for received_at in times:
        store = rng.choice(writers)
        batch = []
        for _ in range(rng.randint(1, 40)):
            if kept and rng.random() < 0.2:
                batch.append(rng.choice(list(kept.values())))
                continue
            serial += 1
            batch.append(_random_event(rng, serial, received_at))
        for e in batch[:3]:
            if e.api_key_id and (e.source, e.event_id) not in kept:
                granted, _ = store.reserve(e.source, e.event_id, e.api_key_id, 50, LEASE, received_at - 1)
                assert granted.granted
                store.settle(e.source, e.event_id, e.prompt_tokens + e.completion_tokens)
        commit = store.commit(batch, received_at, {"negative": rng.randint(0, 2)})
        for e, fresh in zip(batch, commit.inserted):
            key = (e.source, e.event_id)
            assert fresh == (key not in kept)
            kept.setdefault(key, e)
    events = list(kept.values())
    reader = writers[1]
    now = times[-1]
    assert reader.reconcile(now) == []
    for query, group_by in [
        (Query(), ("model", "api_key_id", "caller")),
        (Query(), ("model_name",)),
        (Query(start=now - 2.5 * DAY, end=now - 17.3), ("api_key_id",)),
        (Query(start=now - 3 * HOUR - 0.25, api_key_id="a"), ("model",)),
        (Query(start=now - 61.5, end=now), ()),
        (Query(end=now - DAY - 1.5, model="m2"), ("caller",)),
    ]:
        want = _expected(events, query, group_by)
        got = {tuple(labels[g] for g in group_by): totals for labels, totals in reader.totals(query, group_by)}
        assert set(got) == set(want), query
        assert all(_same_totals(got[k], want[k]) for k in want), query
    for width in WIDTHS:
        query = Query(start=now - 4 * DAY - 123.4, end=now - 77.7)
        want_series: dict[int, Totals] = defaultdict(Totals)
        for e in events:
            if query.start <= e.occurred_at < query.end:
                want_series[bucket(e.occurred_at, width)].add_event(e)
        got_series = dict(reader.series(query, width))
        assert sorted(got_series) == sorted(want_series)
        assert all(_same_totals(got_series[b], want_series[b]) for b in want_series)
    # The month budget counts only what was received since the month began.
    standing = reader.standing("a", now)[0]
    received = _received_at(reader)
    this_month = sum(
        e.prompt_tokens + e.completion_tokens
        for e in events
        if e.api_key_id == "a" and received[e.source, e.event_id] >= month
    )
    assert standing.spent.budget_used == this_month
    for store in writers:
        store.close()


def _received_at(store: UsageStore) -> dict[tuple[str, str], float]:
    return {(s, i): t for s, i, t in store._rows("SELECT source, event_id, received_at FROM events")}


def test_a_budget_period_and_the_minute_window_reset_exactly(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    end_of_month = calendar.timegm((2027, 1, 31, 23, 59, 59)) + 0.5
    for key, period in (("monthly", "month"), ("daily", "day"), ("forever", "total")):
        store.set_limits(KeyLimits(key, token_budget=100, requests_per_minute=5, budget_period=period), end_of_month)
        store.commit([event(0, source=key, api_key_id=key, prompt_tokens=30, completion_tokens=0)], end_of_month, {})
    # Half a second later, a new month and day: only the total budget still holds the 30 tokens.
    after = end_of_month + 0.5
    used = {key: store.standing(key, after)[0].spent.budget_used for key in ("monthly", "daily", "forever")}
    assert used == {"monthly": 0, "daily": 0, "forever": 30}
    assert store.standing("monthly", end_of_month)[0].spent.budget_used == 30
    # The request stays in the per-minute window for a minute after its second ends, then leaves it.
    assert store.standing("monthly", after + 59)[0].spent.requests_last_minute == 1
    assert 0 < store.standing("monthly", after + 59)[0].window_reset_seconds <= 1.0
    assert store.standing("monthly", end_of_month + 60.6)[0].spent.requests_last_minute == 0
    store.close()


async def test_pruning_keeps_every_event_that_could_still_arrive(open_store: Callable[[], UsageStore]) -> None:
    """Events older than the retention go (in batches); totals of all history stay whole from the
    rollups; an event inside the accepted age is never pruned, so its copy is still a duplicate."""
    from services.metering.ledger import DUPLICATE, Ledger

    store = open_store()
    max_age, retention = 2 * DAY, 3 * DAY
    old = [event(i, occurred_at=NOW - 10 * DAY - i) for i in range(25)]
    store.commit(old, NOW - 10 * DAY, {})
    recent = [event(100 + i, occurred_at=NOW - max_age + 5 + i) for i in range(5)]
    store.commit(recent, NOW - max_age + 10, {})
    before = store.totals(Query(), ("model",))
    ledger = Ledger(store, MeteringMetrics(), max_age, 60, clock=lambda: NOW, retention_seconds=retention)
    await ledger.start()
    # The ledger's own pruning runs as it starts; this call may find part of the work done.
    assert await ledger.prune_once(retention, batch=10) <= 25
    assert store._rows("SELECT COUNT(*) FROM events")[0][0] == 5
    assert store._rows("SELECT MIN(bucket) FROM usage_rollups WHERE width = 1")[0][0] == int(NOW - max_age + 5)
    assert await ledger.totals(Query(), ("model",)) == before
    acks = await ledger.record(recent)
    assert [a.status for a in acks] == [DUPLICATE] * 5
    assert store.reconcile(NOW, since=NOW - retention) == []
    # Before the retention an edge is taken to the minute: a minute counts when its start is in the range.
    # The old events are at the minute M and the 24 seconds before it.
    minute = NOW - 10 * DAY
    assert minute == bucket(minute, MINUTE)
    assert (await ledger.totals(Query(end=minute - 12.5), ()))[0][1].requests == 24
    assert (await ledger.totals(Query(start=minute - 12.5, end=minute + 1), ()))[0][1].requests == 1
    await ledger.stop()


def test_an_older_store_gets_its_rollups_when_migrated(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at REAL)")
    for migration in MIGRATIONS[:3]:
        for statement in migration.statements():
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (migration.version, migration.name))
    rng = random.Random(3)
    # The migration counts the running spend at the real time.
    now = time.time()
    events = [_random_event(rng, i, now) for i in range(300)]
    for e in events:
        db.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?,'/v1/x',1,'stop',?,?,?,?,0,?,0,'',?,?)",
            (e.source, e.event_id, e.occurred_at, now - 5, e.model, e.api_key_id, e.status, e.prompt_tokens)
            + (e.completion_tokens, e.cached_tokens, e.generation_seconds, e.model_name, e.caller),
        )
    db.close()
    store = SqliteStore(path)
    assert store.schema_version() == len(MIGRATIONS)
    # The migration fills the rollups and the keys' spend; the per-model counters were never written.
    assert [d for d in store.reconcile(now) if not d.startswith("counters")] == []
    store.set_limits(KeyLimits("a", requests_per_minute=10**6), now)
    assert store.standing("a", now)[0].spent.requests_last_minute == sum(e.api_key_id == "a" for e in events)
    want = _expected(events, Query(start=now - DAY - 0.5), ("model_name",))
    got = {(labels["model_name"],): t for labels, t in store.totals(Query(start=now - DAY - 0.5), ("model_name",))}
    assert set(got) == set(want) and all(_same_totals(got[k], want[k]) for k in want)
    store.close()


def test_totals_values_and_sums_follow_the_total_fields() -> None:
    """values() and add() are written out field by field (they run for every rollup row): they must keep
    TOTAL_FIELDS' order and miss none."""
    one = Totals(**{name: i + 1 for i, name in enumerate(TOTAL_FIELDS)})
    assert one.values() == tuple(range(1, len(TOTAL_FIELDS) + 1))
    both = Totals()
    both.add(one)
    both.add(one)
    assert both.values() == tuple(2 * (i + 1) for i in range(len(TOTAL_FIELDS)))
