"""Runs the stack as local processes: starts each service, waits until all are healthy, stops them on Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.engine.client import EngineClient

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Service:
    name: str
    command: list[str]
    address: str
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    async def healthy(self) -> bool:
        async with EngineClient(self.address) as client:
            return await client.serving(timeout=2.0)


def services(args: argparse.Namespace) -> list[Service]:
    engine_port = os.environ.get("ENGINE_PORT", "50051")
    return [
        Service(
            "engine",
            [sys.executable, "-m", "services.engine", "--model-store", str(args.model_store), "--port", engine_port],
            f"127.0.0.1:{engine_port}",
        ),
    ]


def stop_all(stack: list[Service]) -> None:
    for service in reversed(stack):
        if service.proc is not None and service.proc.poll() is None:
            service.proc.send_signal(signal.SIGTERM)
    for service in reversed(stack):
        if service.proc is None:
            continue
        try:
            service.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(service.proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-store", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--start-timeout", type=float, default=900.0)
    args = parser.parse_args()
    stack = services(args)
    try:
        for service in stack:
            print(f"starting {service.name} on {service.address}", flush=True)
            service.proc = subprocess.Popen(service.command, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + args.start_timeout
        for service in stack:
            while not asyncio.run(service.healthy()):
                if service.proc.poll() is not None:
                    raise SystemExit(f"{service.name} exited with {service.proc.returncode}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"{service.name} not healthy after {args.start_timeout} s")
                time.sleep(1.0)
            print(f"{service.name} is healthy", flush=True)
        engine = stack[0].address
        print(
            f"\nThe stack is up. Engine (gRPC): {engine}\nTry:\n"
            f"  grpcurl -plaintext -d '{{\"text\": \"Hello\", \"sampling\": {{\"max_tokens\": 16}}}}' "
            f"{engine} llmserve.engine.v1.EngineService/Generate\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while all(s.proc.poll() is None for s in stack):
            time.sleep(1.0)
        print("a service exited; stopping the rest", flush=True)
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
    finally:
        stop_all(stack)


if __name__ == "__main__":
    main()
