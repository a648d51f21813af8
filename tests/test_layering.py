"""The house rules that keep each concern in one home: services import contracts and purpose-named shared
packages, never each other; the gateway's domain modules never import its routes or its wiring; and the
light services start without torch, vLLM, transformers or any engine module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tools.processes import ROOT

SERVICES = ("engine", "gateway", "metering")
# The gateway's outer layers: routes and wiring. Everything else in it is domain and must not import them.
ROUTES = ("openai_api", "anthropic_api", "responses_api", "scoring_api", "xinference_api", "ops")
GATEWAY_OUTER = (*ROUTES, "app", "dependencies", "__main__", "shutdown")
HEAVY = ("torch", "vllm", "transformers", "services.engine")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _modules(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.py") if not p.name.startswith("test_")]


def test_services_import_no_other_service() -> None:
    crossings = []
    for service in SERVICES:
        others = tuple(f"services.{o}" for o in SERVICES if o != service)
        for path in _modules(ROOT / "services" / service):
            crossings += [(str(path.relative_to(ROOT)), name) for name in _imports(path) if name.startswith(others)]
    assert crossings == []


def test_shared_packages_import_no_service() -> None:
    shared = [
        p for p in (ROOT / "services").iterdir() if p.is_dir() and p.name not in SERVICES and p.name != "__pycache__"
    ]
    assert {p.name for p in shared} >= {"contracts", "grpc_errors", "grpc_lifecycle", "service_auth", "tracing"}
    crossings = [
        (str(path.relative_to(ROOT)), name)
        for folder in shared
        for path in _modules(folder)
        for name in _imports(path)
        if name.startswith(tuple(f"services.{s}" for s in SERVICES))
    ]
    assert crossings == []


def test_gateway_domain_imports_no_route_or_wiring() -> None:
    gateway = ROOT / "services" / "gateway"
    outer = tuple(f"services.gateway.{name}" for name in GATEWAY_OUTER)
    upward = []
    for path in _modules(gateway):
        top = path.relative_to(gateway).parts[0].removesuffix(".py")
        if top in GATEWAY_OUTER:
            continue
        upward += [(str(path.relative_to(ROOT)), name) for name in _imports(path) if name.startswith(outer)]
    assert upward == []


def test_gateway_wiring_imports_no_route() -> None:
    """The shared dependencies sit below every route package: routes import them, never the other way."""
    routes = tuple(f"services.gateway.{name}" for name in ROUTES)
    upward = [name for name in _imports(ROOT / "services" / "gateway" / "dependencies.py") if name.startswith(routes)]
    assert upward == []


# Imports every module of a service, and builds its app, with the heavy packages made unimportable.
_LIGHT_START = """
import importlib, pkgutil, sys
HEAVY = {heavy!r}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(HEAVY):
            raise ImportError(f"{{name}} imported by a light service")
sys.meta_path.insert(0, Refuse())
import services.{service} as package
for module in pkgutil.walk_packages(package.__path__, "services.{service}."):
    if not module.name.rsplit(".", 1)[-1].startswith(("test_", "__main__")):
        importlib.import_module(module.name)
{build}
print("ok")
"""


def _start_light(service: str, build: str) -> None:
    code = _LIGHT_START.format(heavy=HEAVY, service=service, build=build)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_gateway_needs_no_engine_code_torch_vllm_or_transformers() -> None:
    _start_light(
        "gateway",
        "from services.gateway.app import create_app\n"
        "from services.gateway.config import GatewaySettings\ncreate_app(GatewaySettings())",
    )


def test_metering_needs_no_engine_code_torch_vllm_or_transformers() -> None:
    _start_light("metering", "from services.metering.config import MeteringSettings\nMeteringSettings()")
