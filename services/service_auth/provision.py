"""Makes the internal plane's credentials once: a token per caller (mode 0600) and the callers file the
servers read (digests only). Running it again keeps existing tokens, so services keep working."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.service_auth.callers import ADMIN, GATEWAY, digest

CALLERS_FILE = "callers"
# Caller name → its roles; each gets `<name>.token`.
DEFAULT_CALLERS: dict[str, tuple[str, ...]] = {"gateway": (GATEWAY,), "admin": (ADMIN,)}


def _write_private(path: Path, text: str) -> None:
    """Atomically, readable by the owner only from the first byte on."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def ensure_credentials(directory: Path, callers: dict[str, tuple[str, ...]] = DEFAULT_CALLERS) -> Path:
    """Returns the callers file; tokens that exist are kept, missing ones are made."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    lines = ["# name roles sha256(token): read by the engine and metering (ENGINE_/METERING_CALLERS_FILE)"]
    for name, roles in callers.items():
        token_path = directory / f"{name}.token"
        if not token_path.exists() or not token_path.read_text().strip():
            _write_private(token_path, secrets.token_urlsafe(32) + "\n")
        lines.append(f"{name} {','.join(roles)} {digest(token_path.read_text().strip())}")
    callers_path = directory / CALLERS_FILE
    _write_private(callers_path, "\n".join(lines) + "\n")
    return callers_path
