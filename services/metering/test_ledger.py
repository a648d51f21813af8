"""The ledger on each store (SQLite, and PostgreSQL on the session's real server), in process; the
service itself is tested end to end in tests/."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from services.metering.conftest import NOW, event
from services.metering.ledger import DUPLICATE, RECORDED, REJECTED, Ledger
from services.metering.metrics import MeteringMetrics
from services.metering.postgres_store import PostgresStore
from services.metering.sqlite_store import SqliteStore
from services.metering.store import Query, UsageStore
from services.metering.throughput import spread, window_rate


async def open_ledger(store: UsageStore, metrics: MeteringMetrics | None = None) -> Ledger:
    ledger = Ledger(store, metrics or MeteringMetrics(), max_age_seconds=3600, max_future_seconds=60, clock=lambda: NOW)
    await ledger.start()
    return ledger


async def test_same_event_counts_once(open_store: Callable[[], UsageStore]) -> None:
    ledger = await open_ledger(open_store())
    acks = await ledger.record([event()] * 3)
    assert [a.status for a in acks] == [RECORDED, DUPLICATE, DUPLICATE]
    results = await asyncio.gather(*(ledger.record([event()]) for _ in range(200)))
    assert {r[0].status for r in results} == {DUPLICATE}
    # Same id from another source is another event.
    assert (await ledger.record([event(source="gw-2")]))[0].status == RECORDED
    m1 = (await ledger.counters()).models["m1"]
    assert m1.totals.requests == 2 and m1.totals.completion_tokens == 10 and m1.duplicated == 202
    await ledger.stop()


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"occurred_at": NOW - 7200}, "past"),
        ({"occurred_at": NOW + 600}, "future"),
        ({"prompt_tokens": -1}, "negative"),
        ({"model": ""}, "model"),
        ({"event_id": ""}, "event_id"),
        ({"status": ""}, "status"),
        ({"generation_seconds": float("nan")}, "generation_seconds"),
        ({"cached_tokens": 11}, "cached"),
    ],
)
async def test_bad_events_are_rejected_and_counted(
    open_store: Callable[[], UsageStore], changes: dict, words: str
) -> None:
    ledger = await open_ledger(open_store())
    acks = await ledger.record([event(1), event(2, **changes)])
    assert acks[0].status == RECORDED
    assert acks[1].status == REJECTED and words in acks[1].reason
    assert sum((await ledger.counters()).rejections.values()) == 1
    await ledger.stop()


async def test_an_event_too_long_in_what_describes_it_is_counted_with_those_fields_cut(
    open_store: Callable[[], UsageStore],
) -> None:
    """Before: refused (and dead-lettered by its sender): 64 prompts x n=3 joined 192 finish reasons, and
    2,048 tokens the engine had counted were billed to nobody."""
    store = open_store()
    ledger = await open_ledger(store)
    long = event(1, finish_reason=",".join(["length"] * 192), endpoint="/" * 2000, trace_id="t" * 5000)
    too_long_key = event(2, api_key_id="k" * 2000)
    acks = await ledger.record([long, too_long_key])
    assert acks[0].status == RECORDED
    assert acks[1].status == REJECTED and "api_key_id" in acks[1].reason, "who pays is never cut"
    totals = (await ledger.counters()).models["m1"].totals
    assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (1, 10, 5)
    [(reason, endpoint, trace)] = store._rows("SELECT finish_reason, endpoint, trace_id FROM events")
    assert (len(reason), len(endpoint), len(trace)) == (1024, 1024, 1024)
    assert reason.startswith("length,length")
    await ledger.stop()


async def test_counters_reload_after_restart(open_store: Callable[[], UsageStore]) -> None:
    ledger = await open_ledger(open_store())
    await ledger.record([event(i, status=("ok", "abort", "error")[i % 3]) for i in range(30)])
    await ledger.record([event(0), event(99, prompt_tokens=-5)])
    before = await ledger.counters()
    await ledger.stop()
    again = await open_ledger(open_store())
    counters = await again.counters()
    assert counters == before
    t = counters.models["m1"].totals
    assert (t.requests, t.ok_requests, t.aborted_requests, t.failed_requests) == (30, 10, 10, 10)
    assert counters.models["m1"].duplicated == 1 and counters.rejections == {"negative": 1}
    assert (await again.record([event(5)]))[0].status == DUPLICATE
    await again.stop()


async def test_totals_by_key_and_time_buckets(open_store: Callable[[], UsageStore]) -> None:
    ledger = await open_ledger(open_store())
    await ledger.record(
        [
            event(1, api_key_id="a"),
            event(2, api_key_id="b", model="m2"),
            event(3, api_key_id="a", occurred_at=NOW - 1000),
        ]
    )
    rows = await ledger.totals(Query(), ("model", "api_key_id"))
    assert [(labels["model"], labels["api_key_id"], t.requests) for labels, t in rows] == [
        ("m1", "a", 2),
        ("m2", "b", 1),
    ]
    recent = await ledger.totals(Query(start=NOW - 100, api_key_id="a"), ())
    assert recent[0][1].requests == 1
    minutes = await ledger.series(Query(), 60)
    assert [t.requests for _, t in minutes] == [1, 2]
    await ledger.stop()


def test_throughput_spreads_tokens_over_generation_time() -> None:
    cells: dict[int, float] = {}
    # 100 tokens generated over the 20 s before NOW: half of them fall in the last 10 s.
    spread(cells, NOW, 20.0, 100, NOW)
    assert window_rate(cells, 10.0, NOW) == pytest.approx(5.0)
    assert window_rate(cells, 60.0, NOW) == pytest.approx(100 / 60)
    # Two concurrent requests add up tokens, not rates.
    spread(cells, NOW, 20.0, 100, NOW)
    assert window_rate(cells, 10.0, NOW) == pytest.approx(10.0)
    assert window_rate(cells, 10.0, NOW + 100) == 0.0


def test_one_token_replies_count_in_the_window() -> None:
    """A one-token reply has no generation interval; its token still falls in the window."""
    cells: dict[int, float] = {}
    for i in range(71):
        spread(cells, finished_at=100.0 + i * 0.1, generation_seconds=0.0, tokens=1, now=108.0)
    assert window_rate(cells, 10.0, now=108.0) * 10.0 == 71
    assert window_rate(cells, 10.0, now=120.0) == 0.0


async def test_two_replicas_on_one_database_answer_the_same(new_database: Callable[[], str]) -> None:
    """Idempotent across replicas; counters and windows read from the database on either one."""
    url = new_database()
    one, two = await open_ledger(PostgresStore(url)), await open_ledger(PostgresStore(url))
    batch = [event(i, occurred_at=NOW - 1, generation_seconds=4.0, completion_tokens=8) for i in range(300)]
    # Each event reaches each replica twice, all at once.
    sends = [ledger.record(batch[i::2]) for i in (0, 1) for ledger in (one, two) for _ in range(2)]
    statuses = [a.status for part in await asyncio.gather(*sends) for a in part]
    assert statuses.count(RECORDED) == 300 and statuses.count(DUPLICATE) == 900
    assert await one.counters() == await two.counters()
    assert (await two.counters()).models["m1"].totals.completion_tokens == 2400
    assert await one.throughput() == await two.throughput()
    assert (await one.throughput())["m1"][10.0] == pytest.approx(240.0)
    await one.stop()
    await two.stop()


def test_migrations_are_recorded_once(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    version = store.schema_version()
    assert version >= 2
    store.close()
    again = open_store()
    assert again.schema_version() == version
    assert again._rows("SELECT COUNT(*) FROM schema_migrations")[0][0] == version
    again.close()


async def test_model_labels_are_bounded_and_the_store_keeps_every_name(tmp_path: Path) -> None:
    metrics = MeteringMetrics(max_models=3)
    ledger = await open_ledger(SqliteStore(tmp_path / "u.db"), metrics)
    await ledger.record([event(i, model=f"model-{i}") for i in range(50)])
    labels = {s.labels["model"] for s in metrics.completion_tokens.collect()[0].samples}
    assert labels == {"model-0", "model-1", "model-2", "other"}
    assert metrics.registry.get_sample_value("metering_completion_tokens_total", {"model": "other"}) == 47 * 5
    assert len((await ledger.counters()).models) == 50
    await ledger.stop()


async def test_totals_by_registered_model_name_and_an_older_store(tmp_path: Path) -> None:
    """Two uids running one registered model sum under its name; an event without a name is its own
    model's. A store made before events carried the name opens, and its rows count under their model."""
    path = tmp_path / "u.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE events (source TEXT NOT NULL, event_id TEXT NOT NULL, occurred_at REAL NOT NULL,"
        " received_at REAL NOT NULL, model TEXT NOT NULL, api_key_id TEXT NOT NULL, endpoint TEXT NOT NULL,"
        " streamed INTEGER NOT NULL, finish_reason TEXT NOT NULL, status TEXT NOT NULL,"
        " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,"
        " ttft_seconds REAL NOT NULL, generation_seconds REAL NOT NULL, request_seconds REAL NOT NULL,"
        " trace_id TEXT NOT NULL, PRIMARY KEY (source, event_id))"
    )
    old.execute(
        f"INSERT INTO events VALUES ('gw-0','old',{NOW - 30},{NOW - 30},'tiny','k','/v1/completions',0,"
        "'stop','ok',1,1,0,0,0,0,'')"
    )
    old.commit()
    old.close()
    ledger = await open_ledger(SqliteStore(path))
    await ledger.record(
        [
            event(1, model="tiny-a", model_name="tiny"),
            event(2, model="tiny-b", model_name="tiny"),
            event(3, model="m1"),
        ]
    )
    rows = await ledger.totals(Query(), ("model_name",))
    assert [(labels["model_name"], t.requests) for labels, t in rows] == [("m1", 1), ("tiny", 3)]
    by_uid = await ledger.totals(Query(model="tiny-b"), ())
    assert by_uid[0][1].requests == 1
    by_name = await ledger.totals(Query(model_name="tiny"), ("model",))
    assert [(labels["model"], t.requests) for labels, t in by_name] == [("tiny", 1), ("tiny-a", 1), ("tiny-b", 1)]
    await ledger.stop()
