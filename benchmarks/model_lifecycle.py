"""What launching and terminating a model costs: time to serve and memory of the engine's process tree
(the engine and vLLM's processes), with the engine's started model as the baseline, in rounds.

    .venv/bin/python -m benchmarks.model_lifecycle [--rounds 2] [--source builtin:SmolLM2-tiny-random]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import psutil
from llmserve.engine.v1 import engine_pb2 as pb

from services.contracts.engine_client import EngineClient
from tools.processes import ROOT, ServiceProcess, engine_args, free_port, grpc_serving


def tree_rss_mib(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


async def rounds(engine: ServiceProcess, source: str, count: int) -> list[dict]:
    results = []
    async with EngineClient(engine.address) as client:
        for i in range(count):
            before = tree_rss_mib(engine.proc.pid)
            started = time.perf_counter()
            await client.launch_model(pb.LaunchModelRequest(uid=f"bench-{i}", model_name="bench", source=source))
            launch_seconds = time.perf_counter() - started
            await client.generate_all(
                pb.GenerateRequest(model=f"bench-{i}", text="Hi", sampling=pb.SamplingParams(max_tokens=4))
            )
            loaded = tree_rss_mib(engine.proc.pid)
            started = time.perf_counter()
            await client.terminate_model(f"bench-{i}")
            terminate_seconds = time.perf_counter() - started
            await asyncio.sleep(2.0)
            after = tree_rss_mib(engine.proc.pid)
            results.append(
                {
                    "launch_seconds": round(launch_seconds, 2),
                    "terminate_seconds": round(terminate_seconds, 2),
                    "rss_before_mib": round(before),
                    "rss_loaded_mib": round(loaded),
                    "rss_after_mib": round(after),
                }
            )
            print(results[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--source", default="builtin:SmolLM2-tiny-random")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "model-lifecycle.json")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        engine = ServiceProcess("engine", "services.engine", engine_args(port), Path(logs), f"127.0.0.1:{port}")
        try:
            engine.wait_ready(lambda: grpc_serving(engine.address), 900)
            results = asyncio.run(rounds(engine, args.source, args.rounds))
        finally:
            engine.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"source": args.source, "rounds": results}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
