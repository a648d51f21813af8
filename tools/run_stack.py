"""Runs the stack as local processes (engine, metering, gateway): starts each, waits until all are
healthy, prints the gateway URL and a request to try, and stops them all on Ctrl-C.

Ports come from ENGINE_PORT, METERING_PORT, METERING_METRICS_PORT and GATEWAY_PORT (defaults
50051, 50052, 9102, 8000); every other ENGINE_*, METERING_* and GATEWAY_* variable reaches its service.
The internal credentials are made once in var/credentials (services.service_auth) and handed to all three."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.contracts.engine_client import EngineClient
from services.contracts.metering_client import MeteringClient
from services.service_auth.provision import ensure_credentials
from tools.processes import http_ok

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    healthy: Callable[[], Awaitable[bool]]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


async def _grpc_serving(client_type: type[EngineClient] | type[MeteringClient], address: str) -> bool:
    async with client_type(address) as client:
        return await client.serving(timeout=2.0)


def services(model_store: Path, credentials: Path) -> tuple[list[Service], str]:
    ports = {
        "engine": os.environ.get("ENGINE_PORT", "50051"),
        "metering": os.environ.get("METERING_PORT", "50052"),
        "metering_metrics": os.environ.get("METERING_METRICS_PORT", "9102"),
        "gateway": os.environ.get("GATEWAY_PORT", "8000"),
    }
    engine_addr = f"127.0.0.1:{ports['engine']}"
    metering_addr = f"127.0.0.1:{ports['metering']}"
    gateway_url = f"http://127.0.0.1:{ports['gateway']}"
    python = sys.executable
    callers = str(ensure_credentials(credentials))
    stack = [
        Service(
            "engine",
            [python, "-m", "services.engine"],
            {
                "ENGINE_PORT": ports["engine"],
                "ENGINE_MODEL_STORE": os.environ.get("ENGINE_MODEL_STORE", str(model_store)),
                "ENGINE_CALLERS_FILE": callers,
                "ENGINE_METERING_ADDR": os.environ.get("ENGINE_METERING_ADDR", metering_addr),
                "ENGINE_SERVICE_TOKEN_FILE": str(credentials / "engine.token"),
            },
            lambda: _grpc_serving(EngineClient, engine_addr),
        ),
        Service(
            "metering",
            [python, "-m", "services.metering"],
            {
                "METERING_PORT": ports["metering"],
                "METERING_METRICS_PORT": ports["metering_metrics"],
                "METERING_CALLERS_FILE": callers,
            },
            lambda: _grpc_serving(MeteringClient, metering_addr),
        ),
        Service(
            "gateway",
            [python, "-m", "services.gateway"],
            {
                "GATEWAY_PORT": ports["gateway"],
                "GATEWAY_ENGINE_ADDR": os.environ.get("GATEWAY_ENGINE_ADDR", engine_addr),
                "GATEWAY_METERING_ADDR": os.environ.get("GATEWAY_METERING_ADDR", metering_addr),
                "GATEWAY_SERVICE_TOKEN_FILE": str(credentials / "gateway.token"),
            },
            lambda: http_ok(f"{gateway_url}/health"),
        ),
    ]
    return stack, gateway_url


def stop_all(stack: list[Service]) -> None:
    # A second Ctrl-C (or SIGTERM) must not leave the services running half-stopped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    running = [s for s in stack if s.proc is not None and s.proc.poll() is None]
    # The gateway first, so it drains its usage events while metering still listens.
    for service in reversed(running):
        service.proc.send_signal(signal.SIGTERM)
        try:
            service.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(service.proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--start-timeout", type=float, default=900.0)
    parser.add_argument("--credentials", type=Path, default=ROOT / "var" / "credentials")
    args = parser.parse_args()
    # Ctrl-C and SIGTERM both stop the stack, even when started from a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stack, gateway_url = services(args.model_store, args.credentials)
    try:
        deadline = time.monotonic() + args.start_timeout
        for service in stack:
            print(f"starting {service.name}", flush=True)
            service.proc = subprocess.Popen(
                service.command, cwd=ROOT, env={**os.environ, **service.env}, start_new_session=True
            )
        for service in stack:
            while not asyncio.run(service.healthy()):
                if service.proc.poll() is not None:
                    raise SystemExit(f"{service.name} exited with {service.proc.returncode}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"{service.name} not healthy after {args.start_timeout:.0f} s")
                time.sleep(1.0)
            print(f"{service.name} is healthy", flush=True)
        print(
            f"\nThe stack is up: {gateway_url}  (OpenAI API under {gateway_url}/v1)\nTry:\n"
            f"  curl {gateway_url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            '    -d \'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", '
            '"content": "What is the capital of France?"}], "max_tokens": 32}\'\n'
            "Usage so far: .venv/bin/python -m services.metering report\nCtrl-C stops everything.",
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
