"""`python -m services.metering reconcile`: recounts the store's rollups, running spend and counters from
its raw events (services.metering.reconcile). With `--from --to`: that period's ledger, rollups, events
priced again, and optionally an export file (`--export FILE`), side by side (services.metering
.period_reconcile). Either way on the store metering is configured with (METERING_*); drift exits 1."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from services.metering.config import MeteringSettings
from services.metering.period_reconcile import Figures, drift, file_figures, from_totals, ledger_and_priced, render
from services.metering.rerate_command import when
from services.metering.server import open_store
from services.metering.store import Query, UsageStore


def _period(store: UsageStore, start: float, end: float, export: Path | None) -> dict[str, Figures]:
    rows = list(store.usage_rows_between(start, end))
    ledger, priced = ledger_and_priced(rows, store.price_book())
    (totals,) = [t for _, t in store.totals(Query(start, end), ())] or [None]
    columns = {"ledger": ledger, "rollups": from_totals(totals) if totals else Figures(), "priced": priced}
    if export is not None:
        columns["export"] = file_figures(export)
    return columns


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.metering reconcile", description=__doc__)
    parser.add_argument(
        "--days",
        type=float,
        default=None,
        help="check the rollups of the last DAYS days only (default: all; the retention time if events are pruned)",
    )
    parser.add_argument(
        "--all", action="store_true", help="check all time and the counters too (only while no event was pruned)"
    )
    parser.add_argument("--from", dest="start", type=when, help="a period's figures side by side, from (ISO time)")
    parser.add_argument("--to", dest="end", type=when, help="to (ISO time; the period ends before it)")
    parser.add_argument("--export", type=Path, help="with --from/--to: an export file of the period to compare")
    args = parser.parse_args(argv)
    if (args.start is None) != (args.end is None) or (args.export and args.start is None):
        parser.error("--from and --to go together (and --export needs them)")
    settings = MeteringSettings()
    store = open_store(settings)
    try:
        if args.start is not None:
            columns = _period(store, args.start, args.end, args.export)
            print(render(columns))
            differences = drift(columns)
            for line in differences:
                print(f"drift: {line}")
            if differences:
                raise SystemExit(f"{len(differences)} figures differ")
            print(f"no drift: {', '.join(columns)} agree ({settings.store_description})")
            return
        now = time.time()
        since = None
        if args.all:
            since = None
        elif args.days is not None:
            since = now - args.days * 86400
        elif settings.event_retention_seconds:
            since = now - settings.event_retention_seconds
        differences = store.reconcile(now, since)
    finally:
        store.close()
    for line in differences:
        print(line)
    if differences:
        raise SystemExit(f"{len(differences)} differences between the stored sums and the events")
    checked = "rollups and running spend" if since is not None else "rollups, running spend and counters"
    print(f"{checked} equal the events ({settings.store_description})")
