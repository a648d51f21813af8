"""Operator commands on the gateway's usage outbox (safe while the gateway runs: SQLite WAL).

    python -m services.gateway.usage.admin status       [--data-dir var/gateway]
    python -m services.gateway.usage.admin dead-letters [--data-dir var/gateway]
    python -m services.gateway.usage.admin replay [EVENT_ID ...]   # all when none given

A replayed dead letter goes back to the outbox; the running gateway sends it within seconds."""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

from llmserve.metering.v1 import metering_pb2 as mpb

from services.usage_outbox.outbox import OUTBOX_FILE, Outbox


def _describe(payload: bytes) -> str:
    try:
        event = mpb.UsageEvent.FromString(payload)
    except Exception:  # noqa: BLE001 - a poison row is listed as such
        return "(undecodable)"
    return (
        f"model={event.model} key={event.api_key_id} prompt={event.prompt_tokens} completion={event.completion_tokens}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.gateway.usage.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["status", "dead-letters", "replay"])
    parser.add_argument("event_ids", nargs="*")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("GATEWAY_DATA_DIR", "var/gateway")))
    args = parser.parse_args(argv)
    path = args.data_dir / OUTBOX_FILE
    if not path.exists():
        raise SystemExit(f"no outbox at {path}")
    outbox = Outbox(path)
    try:
        if args.command == "status":
            print(f"pending {outbox.count()}\ndead_letters {outbox.dead_letter_count()}")
        elif args.command == "dead-letters":
            for dead in outbox.dead_letters():
                when = datetime.datetime.fromtimestamp(dead.failed_at, datetime.UTC).isoformat(timespec="seconds")
                print(f"{dead.event_id}\t{when}\t{_describe(dead.payload)}\t{dead.reason}")
        else:
            moved = outbox.replay(args.event_ids or None)
            print(f"replayed {moved} event(s)")
    finally:
        outbox.close()


if __name__ == "__main__":
    main()
