"""compose.yaml describes a runnable stack, and each service's container command starts that service."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.credentials import DIRECTORY as CREDENTIALS
from tests.credentials import engine_client, metering_client
from tools.processes import ROOT, ServiceProcess, free_port, http_ok

OURS = ("engine", "metering", "gateway")


def env_file() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_every_variable_comes_from_env_file() -> None:
    text = (ROOT / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used <= set(env_file()), used - set(env_file())


def test_our_services_are_complete(compose: dict) -> None:
    services = compose["services"]
    assert {"engine", "metering", "gateway", "otel-collector", "jaeger", "prometheus", "grafana"} <= set(services)
    for name in OURS:
        service = services[name]
        build = service["build"]
        assert build["context"] == "."
        dockerfile = ROOT / build["dockerfile"]
        assert dockerfile.is_file()
        # The engine's own image, or the light services' one built for this service.
        assert f"services.{name}" in dockerfile.read_text() or build["args"]["SERVICE"] == name
        assert service["healthcheck"]["test"] and service["restart"] == "unless-stopped"
        assert any(v.split(":")[0] in compose["volumes"] for v in service["volumes"]), "a named volume"
        assert "credentials:/credentials:ro" in service["volumes"]
        assert service["depends_on"]["credentials"] == {"condition": "service_completed_successfully"}
        assert service["environment"]["OTEL_SERVICE_NAME"] == name
    for name in ("engine", "metering"):
        assert "services.grpc_lifecycle.probe" in services[name]["healthcheck"]["test"]
    assert services["engine"]["volumes"] == ["models:/models", "engine-data:/data", "credentials:/credentials:ro"]
    assert services["engine"]["shm_size"] == "2gb"
    assert services["gateway"]["depends_on"] == {
        "credentials": {"condition": "service_completed_successfully"},
        "engine": {"condition": "service_healthy"},
        "metering": {"condition": "service_healthy"},
    }
    assert services["credentials"]["command"][:4] == ["python", "-m", "services.service_auth", "init"]


def test_only_the_gateway_and_the_uis_are_published(compose: dict) -> None:
    """Engine and metering (gRPC and metrics) and the collector stay on the compose network."""
    env = env_file()
    published = {
        _expand(mapping, env).split(":")[0]
        for service in compose["services"].values()
        for mapping in service.get("ports", [])
    }
    assert published == {env[k] for k in ("GATEWAY_PORT", "JAEGER_UI_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT")}
    for internal in ("ENGINE_PORT", "METERING_PORT", "ENGINE_METRICS_PORT", "METERING_METRICS_PORT"):
        assert env[internal] not in published
    debug = yaml.safe_load((ROOT / "compose.debug.yaml").read_text())["services"]
    assert {_expand(p, env).split(":")[0] for p in debug["engine"]["ports"]} == {
        env["ENGINE_PORT"],
        env["ENGINE_METRICS_PORT"],
    }
    gpu = yaml.safe_load((ROOT / "compose.gpu.yaml").read_text())["services"]["engine"]
    assert gpu["build"]["args"]["VLLM_REQUIREMENTS"] == "requirements/gpu.txt"
    assert (ROOT / "requirements" / "gpu.txt").read_text().count("vllm==") == 1


def test_prometheus_scrapes_the_three_services(compose: dict) -> None:
    config = yaml.safe_load((ROOT / "observability" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    env = env_file()
    assert targets == {
        f"gateway:{env['GATEWAY_PORT']}",
        f"metering:{env['METERING_METRICS_PORT']}",
        f"engine:{env['ENGINE_METRICS_PORT']}",
    }


def _local(command: list[str]) -> list[str]:
    assert command[:2] == ["python", "-m"]
    return [sys.executable, *command[1:]]


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], str(value))


async def test_container_commands_start_their_services(
    compose: dict, tmp_path: Path, log_dir: Path, engine_address: str
) -> None:
    """Metering and gateway run their compose command and environment as local processes, with free
    loopback ports and the session's engine in place of the container addresses."""
    env = env_file() | {
        "METERING_PORT": str(free_port()),
        "METERING_METRICS_PORT": str(free_port()),
        "GATEWAY_PORT": str(free_port()),
    }
    env |= {"METERING_ADDR": f"127.0.0.1:{env['METERING_PORT']}", "ENGINE_ADDR": engine_address}
    started = []
    try:
        for name in ("metering", "gateway"):
            service = compose["services"][name]
            service_env = {
                k: _expand(v, env).replace("/credentials/", f"{CREDENTIALS}/")
                for k, v in service["environment"].items()
                if not k.startswith("OTEL_")
            }
            service_env.update({f"{name.upper()}_HOST": "127.0.0.1", f"{name.upper()}_DATA_DIR": str(tmp_path / name)})
            command = _local(service["command"])
            process = ServiceProcess(f"compose-{name}", command[2], command[3:], log_dir, name, env=service_env)
            started.append(process)
            if name == "metering":
                address = f"127.0.0.1:{env['METERING_PORT']}"

                async def ready(address: str = address) -> bool:
                    async with metering_client(address) as client:
                        return await client.serving(timeout=2.0)

            else:
                url = f"http://127.0.0.1:{env['GATEWAY_PORT']}/health"

                def ready(url: str = url):
                    return http_ok(url)

            await asyncio.to_thread(process.wait_ready, ready, 60)
        probe = subprocess.run(
            [sys.executable, "-m", "services.grpc_lifecycle.probe", f"127.0.0.1:{env['METERING_PORT']}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.returncode == 0, probe.stderr
    finally:
        for process in started:
            process.stop()
    # The engine's command is the one the session's engine was started with.
    assert _local(compose["services"]["engine"]["command"])[1:] == ["-m", "services.engine"]
    async with engine_client(engine_address) as engine:
        assert await engine.serving()


def test_docker_waits_longer_than_each_service_drains(compose: dict) -> None:
    """Docker's default 10 s would SIGKILL a gateway still delivering its usage."""
    from services.engine.config import EngineSettings
    from services.gateway.config import GatewaySettings
    from services.metering.config import MeteringSettings

    gateway, engine, metering = GatewaySettings(), EngineSettings(), MeteringSettings()
    needs = {
        "gateway": gateway.shutdown_grace_seconds + gateway.settle_timeout_seconds + gateway.usage_drain_seconds,
        "engine": engine.shutdown_grace_seconds + 2.0,
        "metering": metering.shutdown_grace_seconds,
    }
    for name, seconds in needs.items():
        grace = compose["services"][name]["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > seconds, (name, grace, seconds)
