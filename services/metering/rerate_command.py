"""`python -m services.metering rerate --prices corrected.yaml --from 2026-11-01 --to 2026-12-01 [--apply]`:
prices the period's events again against a corrected price book and prints the difference per key;
`--apply` keeps the re-rating (its book, and each changed event's original and re-rated cost) beside the
original figures, which stay as recorded. Runs on the store metering is configured with (METERING_*)."""

from __future__ import annotations

import argparse
import getpass
import time
from datetime import UTC, datetime
from pathlib import Path

from services.contracts.pricing import show
from services.metering.config import MeteringSettings
from services.metering.price_file import parse
from services.metering.rerating import Rerating
from services.metering.server import open_store


def when(text: str) -> float:
    """An ISO time (UTC if it names no zone) as seconds since the epoch."""
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def render(result: Rerating, currency: str) -> str:
    header = f"{'key':<24} {'events':>8} {'original':>22} {'re-rated':>22} {'difference':>22} {'unpriced':>11}"
    lines = [header, "-" * len(header)]
    for key, d in sorted(result.by_key.items()):
        lines.append(
            f"{key or '(none)':<24} {d.events:>8} {show(d.original_micro, currency):>22}"
            f" {show(d.rerated_micro, currency):>22} {show(d.difference_micro, currency):>22}"
            f" {f'{d.unpriced_before}->{d.unpriced_after}':>11}"
        )
    total = sum(d.difference_micro for d in result.by_key.values())
    lines.append(f"{len(result.changed)} events change; in all {show(total, currency)}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.metering rerate", description=__doc__)
    parser.add_argument("--prices", type=Path, required=True, help="the corrected price book (YAML or CSV)")
    parser.add_argument("--from", dest="start", type=when, required=True, help="ISO time (UTC if no zone)")
    parser.add_argument("--to", dest="end", type=when, required=True)
    parser.add_argument("--apply", action="store_true", help="keep the re-rating beside the original figures")
    args = parser.parse_args(argv)
    rows = parse(args.prices.read_text(), "csv" if args.prices.suffix == ".csv" else "yaml")
    store = open_store(MeteringSettings())
    try:
        result = store.rerate(rows, args.start, args.end, f"cli:{getpass.getuser()}", time.time(), args.apply)
    finally:
        store.close()
    print(render(result, rows[0].currency))
    if args.apply:
        print(f"kept as {result.rerating_id}")
