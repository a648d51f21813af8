"""`python -m services.metering reconcile`: recounts the store's rollups, running spend and counters from
its raw events (services.metering.reconcile), with the store metering is configured with (METERING_*)."""

from __future__ import annotations

import argparse
import time

from services.metering.config import MeteringSettings
from services.metering.server import open_store


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
    args = parser.parse_args(argv)
    settings = MeteringSettings()
    now = time.time()
    since = None
    if args.all:
        since = None
    elif args.days is not None:
        since = now - args.days * 86400
    elif settings.event_retention_seconds:
        since = now - settings.event_retention_seconds
    store = open_store(settings)
    try:
        differences = store.reconcile(now, since)
    finally:
        store.close()
    for line in differences:
        print(line)
    if differences:
        raise SystemExit(f"{len(differences)} differences between the stored sums and the events")
    checked = "rollups and running spend" if since is not None else "rollups, running spend and counters"
    print(f"{checked} equal the events ({settings.store_description})")
