"""The file export and the period's reconciliation, on both stores: a period priced across a price change,
written as Parquet and CSV with FOCUS-named columns, read back with DuckDB equal to the ledger to the
micro-unit (costs as exact decimals, never floats), and reconciled against the rollups and the events
priced again; a file that lost an event is drift."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import duckdb

from services.metering.conftest import NOW, event
from services.metering.focus_export import write_csv, write_parquet
from services.metering.period_reconcile import Figures, drift, file_figures, from_totals, ledger_and_priced
from services.metering.price_file import parse
from services.metering.store import Query, UsageStore

FIRST = "currency: EUR\nprices:\n  - {model: m1, prompt: '0.15', cached_prompt: '0.07', completion: '0.61'}\n"
LATER = "currency: EUR\nprices:\n  - {model: m1, prompt: '0.20', completion: '0.80'}\n"


def test_a_period_exported_reads_back_equal_to_the_ledger(open_store: Callable[[], UsageStore], tmp_path: Path) -> None:
    store = open_store()
    store.import_prices(parse(FIRST, "yaml"), "admin", NOW - 1000)
    store.import_prices(parse(LATER, "yaml"), "admin", NOW - 500)
    events = [
        event(i, occurred_at=NOW - 900 + 20 * i, prompt_tokens=7 + i, completion_tokens=3 * i, cached_tokens=i % 3)
        for i in range(40)
    ]
    events.append(event(99, occurred_at=NOW - 300, model="unpriced-model"))
    store.commit(events, NOW, {})
    start, end = NOW - 1000, NOW
    rows = list(store.usage_rows_between(start, end))
    ledger, priced = ledger_and_priced(rows, store.price_book())
    assert ledger == priced and ledger.requests == 41 and ledger.unpriced_requests == 1
    ((_, totals),) = store.totals(Query(start, end), ())
    assert from_totals(totals) == ledger
    for name, write in (("usage.parquet", write_parquet), ("usage.csv", write_csv)):
        path = tmp_path / name
        assert write(iter(rows), path) == 41
        assert file_figures(path) == ledger
        assert drift({"ledger": ledger, "export": file_figures(path)}) == []
    db = duckdb.connect()
    parquet = str(tmp_path / "usage.parquet")
    billed, micro, count, unpriced, currency = db.execute(
        "SELECT SUM(BilledCost), SUM(x_CostMicro), COUNT(*), COUNT(*) FILTER (WHERE x_Unpriced),"
        f" MAX(BillingCurrency) FROM '{parquet}'"
    ).fetchone()
    assert isinstance(billed, Decimal) and billed == Decimal(ledger.cost_micro).scaleb(-6)
    assert (micro, count, unpriced, currency) == (ledger.cost_micro, 41, 1, "EUR")
    kinds = dict(db.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{parquet}')").fetchall())
    assert kinds["BilledCost"] == "DECIMAL(24,6)" and kinds["ChargePeriodStart"] == "TIMESTAMP WITH TIME ZONE"
    csv_billed, csv_tokens = db.execute(
        f"SELECT SUM(BilledCost), SUM(ConsumedQuantity) FROM read_csv('{tmp_path / 'usage.csv'}',"
        " types={'BilledCost': 'DECIMAL(24,6)'})"
    ).fetchone()
    assert csv_billed == billed and csv_tokens == ledger.prompt_tokens + ledger.completion_tokens
    # A file that lost an event is named as drift, figure by figure.
    write_parquet(iter(rows[1:]), tmp_path / "short.parquet")
    short = drift({"ledger": ledger, "export": file_figures(tmp_path / "short.parquet")})
    assert short[0].startswith("requests: ledger 41, export 40") and len(short) >= 3
    assert drift({"a": Figures(1), "b": Figures(1)}) == []
    store.close()
