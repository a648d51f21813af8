"""`python -m services.metering export --from 2026-11-01 --to 2026-12-01 --out usage-2026-11.parquet`: the
period's usage events, one row each with FOCUS-named columns (services.metering.focus_export), as Parquet
or CSV (by the file's suffix, or --format). Reads the store metering is configured with (METERING_*)."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.metering.config import MeteringSettings
from services.metering.focus_export import write_csv, write_parquet
from services.metering.rerate_command import when
from services.metering.server import open_store


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.metering export", description=__doc__)
    parser.add_argument("--from", dest="start", type=when, required=True, help="ISO time (UTC if no zone)")
    parser.add_argument("--to", dest="end", type=when, required=True, help="ISO time; the period ends before it")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", choices=("parquet", "csv"), default=None, help="default: from --out's suffix")
    args = parser.parse_args(argv)
    form = args.format or ("csv" if args.out.suffix == ".csv" else "parquet")
    store = open_store(MeteringSettings())
    try:
        write = write_csv if form == "csv" else write_parquet
        count = write(store.usage_rows_between(args.start, args.end), args.out)
    finally:
        store.close()
    print(f"{count} usage events written to {args.out} ({form})")
