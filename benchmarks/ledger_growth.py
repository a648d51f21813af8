"""`make bench-ledger`: how metering's costs grow with its history, on both stores.

The ledger is loaded with synthetic but realistic events (1,000 API keys with a long-tailed share of the
requests, 20 models, 60 days of received times) up to each size in turn, written by the store's own commit
(the running totals and throughput cells as ingest writes them). At each size a metering process serves the
database and the benchmark measures, over gRPC as a gateway or an operator would:

- Reserve p50/p99 for the busiest key with a month budget, and for the second busiest with a total budget;
- GetTotals of one key over 30 days, and of all keys (grouped by key) over a day;
- a 30-day series by day; the `report` command's wall time (all history, as it runs by default);
- ingest at batch 100 and 1000 (8 senders, as `make bench-metering`);
- the database's size on disk.

Results go to bench-results/ledger-growth-<date>.json and a plot of each figure against size to
docs/img/ledger-growth.png.

    .venv/bin/python -m benchmarks.ledger_growth [--sizes 0,1000000,10000000] [--stores sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from llmserve.metering.v1 import metering_pb2 as mpb

from benchmarks.metering_bench import ingest, start_metering
from benchmarks.workload import percentile
from services.contracts.metering_client import MeteringClient
from services.metering.events import UsageEvent
from services.metering.postgres_store import PostgresStore
from services.metering.sqlite_store import SqliteStore
from services.metering.store import UsageStore
from tools.postgres import PostgresServer
from tools.processes import ROOT

KEYS = [f"key-{i:04d}" for i in range(1000)]
MODELS = [f"model-{i:02d}" for i in range(20)]
DAYS = 60
DAY = 86400.0
LOAD_BATCH = 5000
MONTH_KEY, TOTAL_KEY = KEYS[0], KEYS[1]
RESERVES = 200
QUERIES = 7


def _weights(count: int, exponent: float) -> list[float]:
    """Cumulative Zipf weights: the first item takes the largest share."""
    total, out = 0.0, []
    for rank in range(1, count + 1):
        total += 1.0 / rank**exponent
        out.append(total)
    return out


KEY_WEIGHTS = _weights(len(KEYS), 1.1)
MODEL_WEIGHTS = _weights(len(MODELS), 0.8)


def synthetic(first: int, count: int, now: float, rng: random.Random) -> Iterator[tuple[float, list[UsageEvent]]]:
    """Events first .. first+count-1 in batches, each batch with its received time: event i of the final
    history falls at a uniformly random moment of the last DAYS days."""
    for start in range(first, first + count, LOAD_BATCH):
        size = min(LOAD_BATCH, first + count - start)
        received_at = now - DAYS * DAY * rng.random()
        keys = rng.choices(KEYS, cum_weights=KEY_WEIGHTS, k=size)
        models = rng.choices(MODELS, cum_weights=MODEL_WEIGHTS, k=size)
        batch = [
            UsageEvent(
                event_id=f"ev-{start + i}",
                source=f"gateway-{(start + i) % 3}",
                occurred_at=received_at - 1.0,
                model=models[i],
                api_key_id=keys[i],
                endpoint="/v1/chat/completions",
                streamed=True,
                finish_reason="stop",
                status="ok",
                prompt_tokens=rng.randint(20, 2000),
                completion_tokens=rng.randint(1, 500),
                cached_tokens=0,
                time_to_first_token_seconds=0.1,
                generation_seconds=0.5,
                request_seconds=0.7,
            )
            for i in range(size)
        ]
        yield received_at, batch


def load(store: UsageStore, first: int, count: int, now: float, seed: int) -> float:
    """Writes the events with the store's own commit; seconds taken."""
    started = time.perf_counter()
    for received_at, batch in synthetic(first, count, now, random.Random(seed)):
        store.commit(batch, received_at, {})
    return time.perf_counter() - started


async def _timed(call: Callable[[], Awaitable[object]], times: int) -> list[float]:
    out = []
    for _ in range(times):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def _range(days: float, now: float) -> mpb.TimeRange:
    span = mpb.TimeRange()
    getattr(span, "from").FromNanoseconds(int((now - days * DAY) * 1e9))
    span.to.FromNanoseconds(int(now * 1e9))
    return span


def _event(event_id: str, key: str) -> mpb.UsageEvent:
    event = mpb.UsageEvent(
        event_id=event_id,
        source="bench",
        model=MODELS[0],
        api_key_id=key,
        status=mpb.REQUEST_STATUS_OK,
        prompt_tokens=5,
        completion_tokens=5,
    )
    event.occurred_at.FromNanoseconds(time.time_ns())
    return event


async def queries(address: str, label: str) -> dict:
    now = time.time()
    out: dict[str, float] = {}
    async with MeteringClient(address) as client:
        for key, period in ((MONTH_KEY, mpb.BUDGET_PERIOD_MONTH), (TOTAL_KEY, mpb.BUDGET_PERIOD_TOTAL)):
            await client.set_limits(mpb.KeyLimits(api_key_id=key, token_budget=10**15, budget_period=period))
            latencies = []
            for i in range(RESERVES):
                request = mpb.ReserveRequest(
                    source="bench", event_id=f"{label}-{key}-{i}", api_key_id=key, tokens=10, lease_seconds=30
                )
                started = time.perf_counter()
                answer = await client.reserve(request, timeout=600)
                latencies.append((time.perf_counter() - started) * 1000)
                assert answer.granted, answer
            # Each reservation's event arrives, as after a real request, and replaces it: a key's reservations
            # in flight cost every Reserve of it (0.4 ms per 100 on PostgreSQL here), so the next size must
            # not start with these still held.
            await client.record([_event(f"{label}-{key}-{i}", key) for i in range(RESERVES)], timeout=600)
            name = "month" if period == mpb.BUDGET_PERIOD_MONTH else "total"
            out[f"reserve_{name}_p50_ms"] = percentile(latencies, 50)
            out[f"reserve_{name}_p99_ms"] = percentile(latencies, 99)
        one_key = mpb.GetTotalsRequest(range=_range(30, now), api_key_id=MONTH_KEY)
        all_keys = mpb.GetTotalsRequest(range=_range(1, now), group_by_api_key=True)
        series = mpb.GetUsageSeriesRequest(range=_range(30, now), bucket=mpb.BUCKET_DAY)
        for name, call in (
            ("totals_one_key_month_ms", lambda: client.totals(one_key, timeout=600)),
            ("totals_all_keys_day_ms", lambda: client.totals(all_keys, timeout=600)),
            ("series_30_days_ms", lambda: client.series(series, timeout=600)),
        ):
            out[name] = percentile(await _timed(call, QUERIES), 50)
    return out


def report_seconds(address: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "services.metering", "report", "--addr", address, "--token-file", "/nonexistent"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=3600,
    )
    return time.perf_counter() - started


def size_on_disk(store: str, path: Path, url: str) -> int:
    if store == "sqlite":
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    opened = PostgresStore(url)
    try:
        return int(opened._rows("SELECT pg_database_size(current_database())")[0][0])
    finally:
        opened.close()


def measure_store(store: str, sizes: list[int], logs: Path, data: Path, postgres: PostgresServer | None) -> list[dict]:
    url = postgres.create_database("ledger_growth") if postgres is not None else ""
    sqlite_path = data / store / "usage.sqlite3"
    sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    rows: list[dict] = []
    for size in sizes:
        opened: UsageStore = PostgresStore(url) if store == "postgres" else SqliteStore(sqlite_path)
        try:
            # What is there already: the loads before and the previous size's ingest measurement.
            there = int(opened._rows("SELECT COUNT(*) FROM events")[0][0])
            added = max(0, size - there)
            load_seconds = load(opened, there, added, now, seed=size)
        finally:
            opened.close()
        # Every event kept: the history spans 60 days, and pruning its older part at start (once, in
        # batches) would run beside the measurements instead of the steady state they are of.
        process = start_metering(logs, sqlite_path.parent, url, {"METERING_EVENT_RETENTION_SECONDS": "0"})
        try:
            row = {
                "store": store,
                "events": there + added,
                "load_events_per_second": added / load_seconds if added else 0.0,
            }
            row |= asyncio.run(queries(process.address, f"{store}-{size}"))
            row["report_seconds"] = report_seconds(process.address)
            row["bytes_on_disk"] = size_on_disk(store, sqlite_path, url)
            for batch in (100, 1000):
                row[f"ingest_{batch}_events_per_second"] = asyncio.run(ingest(process.address, batch, 5.0))[
                    "events_per_second"
                ]
        finally:
            process.stop()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


FIGURES = (
    ("reserve_month_p99_ms", "Reserve p99, month budget (ms)"),
    ("reserve_total_p99_ms", "Reserve p99, total budget (ms)"),
    ("totals_one_key_month_ms", "GetTotals, one key, 30 days (ms)"),
    ("totals_all_keys_day_ms", "GetTotals, all keys, 1 day (ms)"),
    ("series_30_days_ms", "series, 30 days by day (ms)"),
    ("report_seconds", "report, all history (s)"),
    ("ingest_1000_events_per_second", "ingest, batch 1000 (events/s)"),
    ("bytes_on_disk", "database size (bytes)"),
)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 4, figsize=(16, 7))
    for axis, (name, label) in zip(axes.flat, FIGURES):
        for store in sorted({r["store"] for r in rows}):
            mine = [r for r in rows if r["store"] == store]
            axis.plot([r["events"] for r in mine], [r[name] for r in mine], marker="o", label=store)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("events in the ledger", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,1000000,10000000")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--label", default="", help="added to the output names (e.g. before, after)")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    logs = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    rows: list[dict] = []
    postgres = None
    try:
        for store in args.stores.split(","):
            if store == "postgres" and postgres is None:
                postgres = PostgresServer(logs)
            rows += measure_store(store, sizes, logs, logs / "data", postgres if store == "postgres" else None)
    finally:
        if postgres is not None:
            postgres.stop()
    today = datetime.date.today().isoformat()
    suffix = f"-{args.label}" if args.label else ""
    out = ROOT / "bench-results" / f"ledger-growth-{today}{suffix}.json"
    out.write_text(json.dumps({"date": today, "command": " ".join(sys.argv), "rows": rows}, indent=1))
    plot(rows, ROOT / "docs" / "img" / f"ledger-growth{suffix}.png", f"ledger growth {today} {args.label}".strip())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
