"""`make bench-pricing`: what pricing every event costs ingest, side by side with the commit before the price
book (a git worktree), in one run on SQLite: durable events/s at batch 100 and 1000 (8 senders, as
`make bench-metering`), for the baseline, this tree with an empty price book, and this tree with a price
in force for the events' model (every event priced). Rounds alternate, each starting with another case.
Writes bench-results/pricing-<date>.json.

    .venv/bin/python -m benchmarks.pricing_bench [--baseline 1392961] [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmserve.metering.v1 import metering_pb2 as mpb

from benchmarks.admission_bench import _worktree
from benchmarks.metering_bench import ingest, start_metering
from services.contracts.metering_client import MeteringClient
from tools.processes import ROOT, ServiceProcess

BATCHES = (100, 1000)


async def _price(address: str) -> None:
    """A price for model "m" (the benchmark's events) from a moment ago."""
    request = mpb.ImportPricesRequest(
        content='- {model: m, currency: USD, prompt: "0.15", completion: "0.6"}', format="yaml", actor="bench"
    )
    async with MeteringClient(address) as client:
        await client.import_prices(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="1392961", help="the commit before the price book")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-pricing-"))
    tree = _worktree(args.baseline, folder)
    processes: dict[str, ServiceProcess] = {}
    try:
        env = {"PYTHONPATH": f"{tree}:{tree / 'gen'}", "METERING_LOG_LEVEL": "WARNING"}
        processes["baseline"] = start_metering(folder, folder / "baseline", extra_env=env, cwd=tree)
        processes["unpriced"] = start_metering(folder, folder / "unpriced")
        processes["priced"] = start_metering(folder, folder / "priced")
        time.sleep(1)
        asyncio.run(_price(processes["priced"].address))
        time.sleep(1.1)  # the price is in force for every event from here on
        names = list(processes)
        measured: dict[tuple[str, int], list[float]] = {}
        for number in range(args.rounds):
            for case in names[number % len(names) :] + names[: number % len(names)]:
                for batch in BATCHES:
                    result = asyncio.run(ingest(processes[case].address, batch, args.seconds))
                    measured.setdefault((case, batch), []).append(result["events_per_second"])
    finally:
        for process in processes.values():
            process.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    rows = []
    for batch in BATCHES:
        base = sum(measured[("baseline", batch)]) / args.rounds
        for case in names:
            rate = sum(measured[(case, batch)]) / args.rounds
            rows.append(
                {
                    "case": case,
                    "batch": batch,
                    "events_per_second": round(rate),
                    "each_round": [round(r) for r in measured[(case, batch)]],
                    "ratio_to_baseline": round(rate / base, 3),
                }
            )
            print(f"{case:<9} batch {batch:>5}: {rate:9.0f} events/s  ({rate / base:.3f} of baseline)")
    today = datetime.date.today().isoformat()
    out = ROOT / "bench-results" / f"pricing-{today}.json"
    out.write_text(json.dumps({"date": today, "command": " ".join(sys.argv), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
