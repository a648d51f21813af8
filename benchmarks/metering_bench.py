"""Metering throughput and the cost of metering to the gateway, each against a baseline in the same run.

1. Events per second acknowledged durably with batches of 1, 100 and 1000, and the p50/p99 latency
   of an acknowledgement, side by side for SQLite, PostgreSQL with one replica and PostgreSQL with
   two replicas (the client spreads its calls over both), two rounds each, alternated.
2. The gateway's output tokens/s (vLLM's serving benchmark, tiny random model) with metering on
   versus off: the ratio should be close to 1.

    .venv/bin/python -m benchmarks.metering_bench [--seconds 5] [--rounds 2] [--skip-gateway]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from llmserve.metering.v1 import metering_pb2 as mpb

from benchmarks.serving_bench import FIELDS, ModelCase, load, vllm_settings
from benchmarks.workload import percentile
from services.contracts.metering_client import MeteringClient
from services.engine.builtin_models import make_tiny_model
from services.engine.prepare_model import ensure_embedded_model
from tools.postgres import PostgresServer
from tools.processes import ROOT, ServiceProcess, free_port, gateway_env, grpc_serving, http_ok, metering_env

STORES = (("sqlite", 1), ("postgres", 1), ("postgres", 2))
BATCHES = (1, 100, 1000)


def start_metering(
    logs: Path, data: Path, database_url: str = "", extra_env: dict[str, str] | None = None, cwd: Path = ROOT
) -> ServiceProcess:
    port = free_port()
    env = metering_env(port, free_port(), data) | {
        "METERING_LOG_LEVEL": "WARNING",
        "METERING_DATABASE_URL": database_url,
        **(extra_env or {}),
    }
    process = ServiceProcess("metering", "services.metering", [], logs, f"127.0.0.1:{port}", env=env, cwd=cwd)
    process.wait_ready(lambda: grpc_serving(process.address), 60)
    return process


async def ingest(address: str, batch: int, seconds: float, senders: int = 8) -> dict:
    latencies: list[float] = []
    acked = 0
    stop_at = time.perf_counter() + seconds
    counter = iter(range(10**9))
    prefix = f"{time.time_ns()}-"

    async def sender(client: MeteringClient) -> None:
        nonlocal acked
        while time.perf_counter() < stop_at:
            events = []
            for _ in range(batch):
                e = mpb.UsageEvent(
                    event_id=f"{prefix}{next(counter)}",
                    source="bench",
                    model="m",
                    api_key_id="k",
                    status=mpb.REQUEST_STATUS_OK,
                    prompt_tokens=10,
                    completion_tokens=20,
                    generation_seconds=0.5,
                    request_seconds=0.6,
                )
                e.occurred_at.FromNanoseconds(time.time_ns())
                events.append(e)
            started = time.perf_counter()
            acks = await client.record(events, timeout=60)
            latencies.append(time.perf_counter() - started)
            acked += sum(a.status == mpb.ACK_STATUS_RECORDED for a in acks)

    async with MeteringClient(address) as client:
        started = time.perf_counter()
        await asyncio.gather(*(sender(client) for _ in range(senders)))
        elapsed = time.perf_counter() - started
    return {
        "batch": batch,
        "events_per_second": acked / elapsed,
        "ack_p50_ms": percentile(latencies, 50) * 1000,
        "ack_p99_ms": percentile(latencies, 99) * 1000,
        "calls": len(latencies),
        "acked": acked,
    }


def gateway_cost(logs: Path, data: Path, concurrency: int) -> dict:
    embedded = ensure_embedded_model(ROOT / "var" / "models")
    case = ModelCase("tiny", make_tiny_model(embedded, ROOT / "var" / "models"), True, 64, 128, {concurrency: 256})
    engine_port = free_port()
    engine = ServiceProcess(
        "engine",
        "services.engine",
        [
            "--host",
            "127.0.0.1",
            "--port",
            str(engine_port),
            "--metrics-port",
            "0",
            "--model",
            str(case.path),
            "--engine-args",
            json.dumps(vllm_settings(case)),
        ],
        logs,
        f"127.0.0.1:{engine_port}",
    )
    metering = start_metering(logs, data / "gateway-cost")
    results = {}
    try:
        engine.wait_ready(lambda: grpc_serving(engine.address), 900)
        # Alternate off/on twice, so drift on a shared machine hits both sides alike.
        for _ in range(2):
            for label, extra in (("off", {}), ("on", {"metering_addr": metering.address})):
                port = free_port()
                env = gateway_env(
                    port, engine.address, log_level="WARNING", data_dir=str(data / f"gw-{label}"), **extra
                )
                gateway = ServiceProcess(
                    f"gateway-{label}", "services.gateway", [], logs, f"http://127.0.0.1:{port}", env=env
                )
                try:
                    gateway.wait_ready(lambda gateway=gateway: http_ok(f"{gateway.address}/health"), 60)
                    result = load(gateway.address, case, concurrency)
                finally:
                    gateway.stop()
                results.setdefault(label, []).append({f: result[f] for f in FIELDS})
    finally:
        metering.stop()
        engine.stop()
    best = {label: max(runs, key=lambda r: r["output_throughput"]) for label, runs in results.items()}
    return {
        "runs": results,
        "best": best,
        "ratio_on_over_off": best["on"]["output_throughput"] / best["off"]["output_throughput"],
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ingest_side_by_side(logs: Path, data: Path, seconds: float, rounds: int) -> list[dict]:
    """Every store configuration, each on fresh storage per round, rounds alternated."""
    rows = []
    postgres = PostgresServer(logs)
    try:
        for round_ in range(rounds):
            for store, replicas in STORES:
                url = postgres.create_database(f"bench_{round_}_{replicas}") if store == "postgres" else ""
                processes = [
                    start_metering(logs, data / f"{store}-{replicas}-{round_}-{i}", url) for i in range(replicas)
                ]
                address = "ipv4:" + ",".join(p.address for p in processes)
                try:
                    for batch in BATCHES:
                        # Where the CPU goes per acknowledged event: metering's processes and this client.
                        metering_cpu = sum(process_cpu_seconds(p.proc.pid) for p in processes)
                        client_cpu = own_cpu_seconds()
                        row = asyncio.run(ingest(address, batch, seconds))
                        row["metering_cpu_us_per_event"] = (
                            1e6
                            * (sum(process_cpu_seconds(p.proc.pid) for p in processes) - metering_cpu)
                            / row["acked"]
                        )
                        row["client_cpu_us_per_event"] = 1e6 * (own_cpu_seconds() - client_cpu) / row["acked"]
                        rows.append({"store": store, "replicas": replicas, "round": round_ + 1, **row})
                        print(
                            f"{store:>9} x{replicas} round {round_ + 1} {batch:>6} {row['events_per_second']:>10.0f}"
                            f" {row['ack_p50_ms']:>7.1f}ms {row['ack_p99_ms']:>7.1f}ms"
                            f" {row['metering_cpu_us_per_event']:>8.1f}us {row['client_cpu_us_per_event']:>7.1f}us",
                            flush=True,
                        )
                finally:
                    for p in processes:
                        p.stop()
    finally:
        postgres.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--skip-gateway", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "metering.json")
    args = parser.parse_args()
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        logs, data = Path(tmp), Path(tmp) / "data"
        print(
            f"{'store':>9} {'':>11} {'batch':>6} {'events/s':>10} {'ack p50':>9} {'ack p99':>9}"
            f" {'metering CPU/event':>10} {'client CPU/event':>10}"
        )
        report["ingest"] = ingest_side_by_side(logs, data, args.seconds, args.rounds)
        if not args.skip_gateway:
            report["gateway"] = gateway_cost(logs, data, args.concurrency)
            best = report["gateway"]["best"]
            print(
                f"\ngateway, tiny model, concurrency {args.concurrency}: output tok/s metering off "
                f"{best['off']['output_throughput']:.0f}, on {best['on']['output_throughput']:.0f}, "
                f"ratio on/off {report['gateway']['ratio_on_over_off']:.3f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
