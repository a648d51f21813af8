"""The test harness: the stack's services started as real processes on free loopback ports (functions that
return the running process; `running` stops one when a block ends), waiting on a condition, and reading
what the engine and metering counted. Every test module takes these from here; none imports another."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.metering.v1 import metering_pb2 as mpb

from services.contracts.builtin_models import TINY_NAME
from services.engine.builtin_models import make_tiny_model
from services.engine.prepare_model import ensure_embedded_model
from tests.credentials import CALLERS_FILE, DIRECTORY, GATEWAY_TOKEN_FILE, engine_client, metering_client
from tools.processes import (
    MODEL_STORE,
    ServiceProcess,
    engine_args,
    free_port,
    gateway_env,
    grpc_serving,
    http_ok,
    metering_env,
)

MODEL = "SmolLM2-135M-Instruct"
API_KEY = "sk-test-secret-1"
# May also read /metrics and the API docs.
ADMIN_API_KEY = "sk-test-admin-1"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_API_KEY}"}
ENGINE_START_TIMEOUT = 600.0


# Waiting on a condition


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Polls until `predicate` holds; fails the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """wait_for, for a test that is not a coroutine."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


async def engine_load(engine_address: str) -> pb.GetLoadResponse:
    async with engine_client(engine_address) as engine:
        return await engine.load()


async def wait_idle(engine_address: str, timeout: float = 30.0) -> pb.GetLoadResponse:
    """Waits until the engine runs nothing (no unfinished request, no open stream); its load then."""
    loads: list[pb.GetLoadResponse] = []

    async def idle() -> bool:
        loads.append(await engine_load(engine_address))
        return loads[-1].unfinished_requests == 0 and loads[-1].open_streams == 0

    await wait_for(idle, timeout, "the engine to go idle")
    return loads[-1]


async def engine_baseline(engine_address: str, metering_address: str, timeout: float = 30.0) -> tuple[int, int]:
    """What the engine counted less what metering holds, in (prompt, completion) tokens, once the engine is
    idle and holds no usage unconfirmed: metering then holds the engine's count less this (what
    metering_reaches_engine checks). An earlier test's gateway that died leaves its usage held at the
    engine; the test's own gateway (started before this) claims it into the test's metering, which the
    offset takes in."""
    await wait_idle(engine_address, timeout)

    async def nothing_held() -> bool:
        return (await engine_load(engine_address)).held_usage == 0

    await wait_for(nothing_held, timeout, "the engine to hold no usage of earlier tests")
    served = await engine_served(engine_address)
    metered = await metering_totals(metering_address)
    return served[0] - metered.prompt_tokens, served[1] - metered.completion_tokens


async def engine_served(engine_address: str) -> tuple[int, int]:
    """(prompt, completion) tokens the engine counted since it started."""
    load = await engine_load(engine_address)
    return load.prompt_tokens, load.completion_tokens


async def metering_totals(address: str) -> mpb.Totals:
    async with metering_client(address) as client:
        return (await client.counters()).all


async def totals_by_key(address: str) -> dict[str, mpb.Totals]:
    async with metering_client(address) as client:
        rows = await client.totals(mpb.GetTotalsRequest(group_by_api_key=True))
    return {row.api_key_id: row.totals for row in rows}


async def metering_reaches_engine(
    metering_address: str, engine_address: str, before: tuple[int, int], timeout: float
) -> None:
    """Waits until metering's (prompt, completion) totals equal what the engine counted since `before`,
    and the engine holds no usage unconfirmed."""
    await wait_idle(engine_address)
    after = await engine_served(engine_address)
    engine_delta = (after[0] - before[0], after[1] - before[1])

    seen: list[tuple[int, int]] = []

    async def reached() -> bool:
        totals = await metering_totals(metering_address)
        seen.append((totals.prompt_tokens, totals.completion_tokens))
        return seen[-1] == engine_delta

    try:
        await wait_for(reached, timeout, f"metering to reach the engine's {engine_delta}")
    except AssertionError as missed:
        raise AssertionError(f"{missed}; metering has {seen[-1]}") from None

    async def confirmed() -> bool:
        return (await engine_load(engine_address)).held_usage == 0

    # Nothing left held for a later test's gateway to claim (and bill to that test's metering).
    await wait_for(confirmed, 30, "the engine to hold no unconfirmed usage")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus exposition's samples of `name` that carry these labels."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


# The services


def start_engine(
    log_dir: Path,
    name: str = "engine",
    port: int | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ServiceProcess:
    """An engine process (the embedded model unless `extra_args` name another), checking the test
    session's credentials; waits until it serves."""
    port = port or free_port()
    args = engine_args(port)
    process = ServiceProcess(
        name,
        "services.engine",
        [*args, *(extra_args or [])],
        log_dir,
        f"127.0.0.1:{port}",
        env={"ENGINE_CALLERS_FILE": str(CALLERS_FILE), **(env or {})},
    )
    process.metrics_url = f"http://127.0.0.1:{args[args.index('--metrics-port') + 1]}/metrics"
    process.wait_ready(lambda: grpc_serving(process.address), ENGINE_START_TIMEOUT)
    return process


def start_tiny_engine(log_dir: Path, port: int, metering_address: str, data_dir: Path, name: str) -> ServiceProcess:
    """An engine serving the tiny random-weights model (fast), metering internal callers to `metering_address`."""
    tiny = make_tiny_model(ensure_embedded_model(MODEL_STORE), MODEL_STORE)
    process = ServiceProcess(
        name,
        "services.engine",
        [
            *engine_args(port, data_dir),
            "--model",
            str(tiny),
            "--served-model-name",
            TINY_NAME,
            "--load-format",
            "dummy",
        ],
        log_dir,
        f"127.0.0.1:{port}",
        env={
            "ENGINE_CALLERS_FILE": str(CALLERS_FILE),
            "ENGINE_METERING_ADDR": metering_address,
            "ENGINE_SERVICE_TOKEN_FILE": str(DIRECTORY / "engine.token"),
        },
    )
    process.wait_ready(lambda: grpc_serving(process.address), ENGINE_START_TIMEOUT)
    return process


def start_gateway(
    log_dir: Path,
    engine_address: str,
    name: str = "gateway",
    healthy: bool = True,
    env: dict[str, str] | None = None,
    **settings: str,
) -> ServiceProcess:
    """A gateway process; waits for /health to say 200 (or, with healthy=False, for it to answer at all)."""
    port = free_port()
    settings.setdefault("api_keys", f"test-key:{API_KEY},test-admin:{ADMIN_API_KEY}")
    settings.setdefault("admin_key_ids", "test-admin")
    settings.setdefault("service_token_file", str(GATEWAY_TOKEN_FILE))
    process = ServiceProcess(
        name,
        "services.gateway",
        [],
        log_dir,
        f"http://127.0.0.1:{port}",
        env={**gateway_env(port, engine_address, **settings), **(env or {})},
    )
    url = f"{process.address}/health" if healthy else f"{process.address}/openapi.json"
    process.wait_ready(lambda: http_ok(url, ADMIN_HEADERS), 60)
    return process


def start_metering(
    log_dir: Path, data_dir: Path, port: int | None = None, name: str = "metering", env: dict[str, str] | None = None
) -> ServiceProcess:
    """A metering process on `port` (a free one if None), storing in data_dir (or the database in `env`)."""
    port = port or free_port()
    metrics_port = free_port()
    process = ServiceProcess(
        name,
        "services.metering",
        [],
        log_dir,
        f"127.0.0.1:{port}",
        env={**metering_env(port, metrics_port, data_dir), "METERING_CALLERS_FILE": str(CALLERS_FILE), **(env or {})},
    )
    process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    process.wait_ready(lambda: grpc_serving(process.address), 60)
    return process


@contextmanager
def metered_gateway(
    log_dir: Path, folder: Path, engine_address: str, name: str
) -> Iterator[tuple[ServiceProcess, ServiceProcess, Path]]:
    """A metering process on SQLite and a gateway recording to it: (gateway, metering, the SQLite file)."""
    with running(start_metering(log_dir, folder / "metering", name=f"metering-{name}")) as metering:
        gateway = start_gateway(
            log_dir, engine_address, f"gateway-{name}", data_dir=str(folder / "g"), metering_addr=metering.address
        )
        with running(gateway):
            yield gateway, metering, folder / "metering" / "usage.sqlite3"


@contextmanager
def running(process: ServiceProcess) -> Iterator[ServiceProcess]:
    """Stops the process when the block ends, however it ends."""
    try:
        yield process
    finally:
        process.stop()
