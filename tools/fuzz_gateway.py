"""`make fuzz`: the hostile shapes (tools/hostile_shapes.py), then schemathesis against the gateway's own
OpenAPI schema, with the real engine (the tiny random-weights model, so generations are cheap), metering
and gateway on loopback, within a time and example budget; a canary stream runs throughout. Fails on a
hostile shape not refused with the 400 naming its bound, on any 5xx, on a process that died, on a canary
that waited longer than its bound for its next event (what one tenant's request made everyone wait), or
when the engine's totals and metering's disagree afterwards (every token the engine generated is metered
once).

    python -m tools.fuzz_gateway [--max-examples 25] [--max-time 600] [--canary-wait 5] [--fuzz-canary-wait 30]"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
from llmserve.metering.v1 import metering_pb2 as mpb

from services.contracts.builtin_models import TINY_NAME
from services.contracts.engine_client import EngineClient
from services.contracts.metering_client import MeteringClient
from services.engine.builtin_models import make_tiny_model
from services.engine.prepare_model import ensure_embedded_model
from tools.hostile_shapes import Canary, refusal_problem, send, shapes
from tools.processes import (
    MODEL_STORE,
    ROOT,
    ServiceProcess,
    engine_args,
    free_port,
    gateway_env,
    http_ok,
    metering_env,
)

KEY, ADMIN = "sk-fuzz-user", "sk-fuzz-admin"
_T = TypeVar("_T")


async def _serving(kind: type[EngineClient] | type[MeteringClient], address: str) -> bool:
    async with kind(address) as client:
        return await client.serving(timeout=2.0)


async def _engine_totals(address: str) -> tuple[int, int]:
    async with EngineClient(address) as engine:
        for _ in range(600):
            load = await engine.load()
            if load.unfinished_requests == 0 and load.open_streams == 0:
                return load.prompt_tokens, load.completion_tokens
            await asyncio.sleep(0.1)
    raise TimeoutError("the engine did not go idle")


async def _metering_totals(address: str, want: tuple[int, int]) -> tuple[int, int]:
    """Metering's (prompt, completion) totals, once they reach `want` or 60 s pass."""
    async with MeteringClient(address) as metering:
        for _ in range(300):
            rows = await metering.totals(mpb.GetTotalsRequest())
            got = (sum(r.totals.prompt_tokens for r in rows), sum(r.totals.completion_tokens for r in rows))
            if got == want:
                break
            await asyncio.sleep(0.2)
    return got


async def _with_canary(gateway: str, work: Callable[[httpx.AsyncClient], Awaitable[_T]]) -> tuple[_T, Canary]:
    """Runs `work` while a canary streams beside it; (its result, the canary)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=600) as http:
        canary = Canary(http, TINY_NAME)
        running = asyncio.create_task(canary.run())
        try:
            return await work(http), canary
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


async def _hostile(http: httpx.AsyncClient) -> list[str]:
    """Each hostile shape, one after another: the problems (a shape not refused as it should be)."""
    problems = []
    for shape in shapes(TINY_NAME):
        started = time.monotonic()
        reply = await send(http, shape)
        print(f"{shape.name:<40} {reply.status_code} in {time.monotonic() - started:6.2f} s", flush=True)
        problem = refusal_problem(shape, reply)
        if problem:
            problems.append(problem)
    return problems


async def _schemathesis(command: list[str]) -> int:
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT)
    return await process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--max-time", type=float, default=600.0)
    parser.add_argument(
        "--canary-wait", type=float, default=5.0, help="seconds the canary may wait while the hostile shapes run"
    )
    parser.add_argument(
        "--fuzz-canary-wait", type=float, default=30.0, help="the same during schemathesis's (heavy) requests"
    )
    parser.add_argument("--shapes-only", action="store_true", help="the hostile shapes and the canary only")
    args = parser.parse_args()
    tiny = make_tiny_model(ensure_embedded_model(MODEL_STORE), MODEL_STORE)
    logs = Path(tempfile.mkdtemp(prefix="fuzz-"))
    engine_port, metering_port, gateway_port = free_port(), free_port(), free_port()
    engine = ServiceProcess(
        "engine",
        "services.engine",
        [*engine_args(engine_port), "--model", str(tiny), "--served-model-name", TINY_NAME, "--load-format", "dummy"],
        logs,
        f"127.0.0.1:{engine_port}",
    )
    metering = ServiceProcess(
        "metering",
        "services.metering",
        [],
        logs,
        f"127.0.0.1:{metering_port}",
        env=metering_env(metering_port, free_port(), logs / "metering"),
    )
    processes = [engine, metering]
    try:
        engine.wait_ready(lambda: _serving(EngineClient, engine.address), 600)
        metering.wait_ready(lambda: _serving(MeteringClient, metering.address), 60)
        gateway = ServiceProcess(
            "gateway",
            "services.gateway",
            [],
            logs,
            f"http://127.0.0.1:{gateway_port}",
            env=gateway_env(
                gateway_port,
                engine.address,
                metering_addr=metering.address,
                data_dir=str(logs / "gateway"),
                api_keys=f"user:{KEY},admin:{ADMIN}",
                admin_key_ids="admin",
            ),
        )
        processes.append(gateway)
        gateway.wait_ready(lambda: http_ok(f"{gateway.address}/health"), 60)
        before = asyncio.run(_engine_totals(engine.address))
        problems, hostile_canary = asyncio.run(_with_canary(gateway.address, _hostile))
        for problem in problems:
            print(f"hostile shape: {problem}")
        print(
            f"canary beside the hostile shapes: {hostile_canary.streams} streams, longest wait"
            f" {hostile_canary.longest_wait:.2f} s (bound {args.canary_wait} s)"
        )
        command = [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{gateway.address}/openapi.json",
            "-H",
            f"Authorization: Bearer {ADMIN}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(args.max_examples),
            "--max-time",
            str(int(args.max_time)),
            "--request-timeout",
            "120",
            "--workers",
            "2",
            "--seed",
            "1",
            "--exclude-path-regex",
            "^/v1/models$|^/v1/models/\\{model_uid\\}$",
        ]
        fuzz_code, stalled = 0, hostile_canary.longest_wait > args.canary_wait or not hostile_canary.streams
        if not args.shapes_only:
            fuzz_code, fuzz_canary = asyncio.run(_with_canary(gateway.address, lambda _: _schemathesis(command)))
            print(
                f"canary beside schemathesis: {fuzz_canary.streams} streams, longest wait"
                f" {fuzz_canary.longest_wait:.2f} s (bound {args.fuzz_canary_wait} s)"
            )
            stalled = stalled or fuzz_canary.longest_wait > args.fuzz_canary_wait or not fuzz_canary.streams
        dead = [p.name for p in processes if p.proc.poll() is not None]
        after = asyncio.run(_engine_totals(engine.address))
        engine_delta = (after[0] - before[0], after[1] - before[1])
        metered = asyncio.run(_metering_totals(metering.address, engine_delta))
        print(
            f"engine generated (prompt, completion) {engine_delta}; metering recorded {metered}; dead: {dead or 'none'}"
        )
        if fuzz_code != 0 or problems or stalled or dead or metered != engine_delta:
            raise SystemExit(1)
    finally:
        for process in reversed(processes):
            process.stop()


if __name__ == "__main__":
    main()
