"""The light images (gateway, metering) install requirements/service.txt only (services/light.Dockerfile):
every third-party package their code imports must be pinned there or come with one that is (pip installs
the dependencies), or the container fails at start (as metering's did when price files brought in PyYAML)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the light Dockerfile copies besides the service's own folder.
SHARED = ("contracts", "grpc_errors", "grpc_lifecycle", "service_auth", "tracing", "usage_outbox")
OURS = {"services", "llmserve", "tools"}


def _imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        if path.name.startswith("test_") or path.name == "conftest.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ;(]", requirement.strip())[0].lower().replace("_", "-")


def _installed_with_service_txt() -> set[str]:
    """The pinned distributions and, recursively, what they require (extras left out)."""
    lines = (ROOT / "requirements" / "service.txt").read_text().splitlines()
    todo = [_name(line) for line in lines if "==" in line]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [_name(r) for r in needs if "extra ==" not in r]
    return seen


def test_every_import_of_the_light_services_is_pinned_for_their_image() -> None:
    distributions = packages_distributions()
    pinned = _installed_with_service_txt()
    for service in ("gateway", "metering"):
        folders = [ROOT / "services" / service, *(ROOT / "services" / name for name in SHARED)]
        modules = set().union(*(_imports(folder) for folder in folders)) - OURS - set(sys.stdlib_module_names)
        missing = {
            module: distributions.get(module, [module])
            for module in modules
            if not any(d.lower().replace("_", "-") in pinned for d in distributions.get(module, [module]))
        }
        assert not missing, f"{service} imports what requirements/service.txt does not pin: {missing}"
