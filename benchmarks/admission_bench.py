"""`make bench-admission`: what limits at every level cost a request's admission, side by side with the
commit before organisations and teams existed (limits per key only), on PostgreSQL at 32 concurrent callers.

Each caller has its own key and runs a request's metering lifecycle over and over: Reserve (timed), then
the usage event that replaces the reservation (RecordUsage, not timed), as a gateway does. Cases, each in
its own database, rounds alternated (each starting with another case):

- baseline: the baseline commit's metering (a git worktree), keys with their own limits;
- key: this tree, the same keys and limits (keys issued here, in no team);
- levels: this tree, the keys in one team of one organisation, with limits on key, team and organisation
  (every reservation of the organisation waits for the one before it: they share its limits);
- money: this tree, keys with their own token limits and a money budget, every event priced.

Prints p50/p99 of Reserve per case and the difference to the baseline; writes
bench-results/admission-<date>.json.

    .venv/bin/python -m benchmarks.admission_bench [--baseline 01b1d30] [--rounds 3] [--requests 25]
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

import psycopg
from llmserve.metering.v1 import metering_pb2 as mpb

from benchmarks.metering_bench import start_metering
from benchmarks.workload import percentile
from services.contracts.metering_client import MeteringClient
from tools.postgres import PostgresServer
from tools.processes import ROOT, ServiceProcess

CALLERS = 32
BIG = 10**12


def _limits(subject: str, money: bool = False) -> mpb.KeyLimits:
    limits = mpb.KeyLimits(api_key_id=subject, requests_per_minute=BIG, tokens_per_minute=BIG, token_budget=BIG)
    if money:
        limits.money_budget_micro = BIG
    return limits


def _limit_rows(url: str, subjects: list[str]) -> None:
    """Key limits written straight into a database (the baseline's SetLimits takes another message)."""
    with psycopg.connect(url, autocommit=True) as connection:
        for subject in subjects:
            connection.execute(
                "INSERT INTO key_limits (api_key_id, requests_per_minute, tokens_per_minute, token_budget,"
                " budget_period, updated_at) VALUES (%s, %s, %s, %s, 'total', 0)",
                (subject, BIG, BIG, BIG),
            )


async def _issue_keys(client: MeteringClient, in_team: bool) -> list[str]:
    team_id = ""
    if in_team:
        org = await client.create_organization(mpb.CreateOrganizationRequest(name="bench", actor="bench"))
        team = await client.create_team(mpb.CreateTeamRequest(org_id=org.org_id, name="bench", actor="bench"))
        team_id = team.team_id
        for subject in (org.org_id, team_id):
            await client.set_limits(_limits(subject), "bench")
    keys = []
    for i in range(CALLERS):
        issued = await client.create_key(mpb.CreateKeyRequest(name=f"bench-{i}", team_id=team_id, actor="bench"))
        keys.append(issued.key.key_id)
    return keys


async def _round(address: str, keys: list[str], requests: int, tag: str, callers: int) -> list[float]:
    latencies: list[float] = []

    async def caller(client: MeteringClient, key: str, n: int) -> None:
        for i in range(requests):
            event_id = f"{tag}-{n}-{i}"
            started = time.perf_counter()
            answer = await client.reserve(
                mpb.ReserveRequest(
                    source="bench", event_id=event_id, api_key_id=key, tokens=60, lease_seconds=60, cost_micro=60
                )
            )
            latencies.append(time.perf_counter() - started)
            assert answer.granted, answer.reason
            event = mpb.UsageEvent(
                event_id=event_id,
                source="bench",
                model="m",
                api_key_id=key,
                status=mpb.REQUEST_STATUS_OK,
                prompt_tokens=20,
                completion_tokens=40,
            )
            event.occurred_at.FromNanoseconds(time.time_ns())
            await client.record([event])

    async with MeteringClient(address) as client:
        await asyncio.gather(*(caller(client, key, n) for n, key in enumerate(keys[:callers])))
    return latencies


def _worktree(revision: str, folder: Path) -> Path:
    tree = folder / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=ROOT, check=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="01b1d30", help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=25, help="per caller per round")
    parser.add_argument("--callers", type=int, default=CALLERS, help=f"concurrent callers (at most {CALLERS})")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-admission-"))
    postgres = PostgresServer(folder)
    tree = _worktree(args.baseline, folder)
    processes: list[ServiceProcess] = []
    try:
        cases: dict[str, tuple[str, list[str]]] = {}
        baseline_url = postgres.create_database("baseline")
        baseline = start_metering(
            folder, folder / "baseline-data", baseline_url, {"PYTHONPATH": f"{tree}:{tree / 'gen'}"}, cwd=tree
        )
        processes.append(baseline)
        keys = [f"baseline-key-{i}" for i in range(CALLERS)]
        _limit_rows(baseline_url, keys)
        cases["baseline"] = (baseline.address, keys)
        for case, in_team, money in (("key", False, False), ("levels", True, False), ("money", False, True)):
            process = start_metering(folder, folder / f"{case}-data", postgres.create_database(case))
            processes.append(process)

            async def setup(address: str = process.address, team: bool = in_team, money: bool = money) -> list[str]:
                async with MeteringClient(address) as client:
                    keys = await _issue_keys(client, team)
                    for key in keys:
                        await client.set_limits(_limits(key, money), "bench")
                    if money:
                        price = '- {model: m, currency: USD, prompt: "1", completion: "1"}'
                        await client.import_prices(mpb.ImportPricesRequest(content=price, actor="bench"))
                    return keys

            cases[case] = (process.address, asyncio.run(setup()))
        measured: dict[str, list[float]] = {case: [] for case in cases}
        names = list(cases)
        for number in range(args.rounds):
            # Each round starts with another case, so none always runs first or last.
            for case in names[number % len(names) :] + names[: number % len(names)]:
                address, keys = cases[case]
                measured[case] += asyncio.run(_round(address, keys, args.requests, f"r{number}", args.callers))
    finally:
        for process in processes:
            process.stop()
        postgres.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    rows = {}
    base_p50 = percentile(measured["baseline"], 50) * 1000
    base_p99 = percentile(measured["baseline"], 99) * 1000
    for case, latencies in measured.items():
        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        rows[case] = {
            "reserves": len(latencies),
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "p50_minus_baseline_ms": round(p50 - base_p50, 2),
            "p99_minus_baseline_ms": round(p99 - base_p99, 2),
        }
        print(f"{case:<9} n={len(latencies):<5} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  (p50 {p50 - base_p50:+.2f} ms)")
    today = datetime.date.today().isoformat()
    out = ROOT / "bench-results" / f"admission-{today}-c{args.callers}.json"
    body = {"date": today, "command": " ".join(sys.argv), "callers": args.callers, "baseline": args.baseline}
    body["rows"] = rows
    out.write_text(json.dumps(body, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
