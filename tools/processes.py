"""Starts the stack's services as real processes on free loopback ports (tests and benchmarks)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_STORE = Path(os.environ.get("MODEL_STORE", ROOT / "var" / "models"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """One service started with `python -m <module> <args>`, its output going to a log file."""

    started: list[ServiceProcess] = []

    def __init__(
        self,
        name: str,
        module: str,
        args: list[str],
        log_dir: Path,
        address: str,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ):
        """cwd: the tree whose code runs (another checkout, for a side-by-side benchmark)."""
        self.name = name
        self.address = address
        self.metrics_url = ""
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        ServiceProcess.started.append(self)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, ready: Callable[[], Awaitable[bool]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if asyncio.run(ready()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    @classmethod
    def stop_all(cls) -> None:
        """A safety net: stops whatever a failed test left running."""
        for process in cls.started:
            process.stop(timeout=5.0)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL of the whole process group (vLLM's workers included)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def engine_args(port: int, data_dir: Path | None = None) -> list[str]:
    """Test settings: eager mode starts fastest; a short context, and a KV cache sized in bytes (2 GiB, about
    23,000 tokens of the embedded model), not as a share of the machine's RAM, which other processes'
    memory would make too small to start; a data folder (held usage, outbox) of its own for each engine
    unless one is given."""
    return [
        "--data-dir",
        str(data_dir or tempfile.mkdtemp(prefix=f"llmserve-engine-{port}-")),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(free_port()),
        "--model-store",
        str(MODEL_STORE),
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--kv-cache-memory-bytes",
        str(2 << 30),
        "--shutdown-grace-seconds",
        "3",
    ]


def gateway_env(port: int, engine_address: str, **settings: str) -> dict[str, str]:
    env = {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_ENGINE_ADDR": engine_address}
    env.update({f"GATEWAY_{k.upper()}": v for k, v in settings.items()})
    return env


async def grpc_serving(address: str) -> bool:
    """Whether the gRPC service at `address` says SERVING on its (open) health check."""
    from services.contracts.channel import ServiceChannel

    async with ServiceChannel(address) as channel:
        return await channel.serving(timeout=2.0)


async def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(url, headers=headers)).status_code == 200
    except httpx.HTTPError:
        return False


def metering_env(port: int, metrics_port: int, data_dir: Path) -> dict[str, str]:
    return {
        "METERING_HOST": "127.0.0.1",
        "METERING_PORT": str(port),
        "METERING_METRICS_PORT": str(metrics_port),
        "METERING_DATA_DIR": str(data_dir),
    }
