"""The internal plane's credentials, managed like API keys: `init` makes the built-in callers' tokens once
(token files, mode 0600); `add`, `rotate`, `remove` and `list` manage any caller. The callers file the
servers read holds digests only; a token is shown once, when it is made. The servers pick up every
change without a restart."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from services.service_auth.callers import ADMIN, ENGINE, GATEWAY, ROLES, CallerEntry, digest, parse_callers

CALLERS_FILE = "callers"
# The built-in callers → their roles; each gets `<name>.token` beside the callers file.
DEFAULT_CALLERS: dict[str, tuple[str, ...]] = {"gateway": (GATEWAY,), "admin": (ADMIN,), "engine": (ENGINE,)}
_HEADER = "# name roles sha256(token) [not-after]: read by the engine and metering (ENGINE_/METERING_CALLERS_FILE)"


def _write_private(path: Path, text: str) -> None:
    """Atomically, readable by the owner only from the first byte on."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _entries(directory: Path) -> list[CallerEntry]:
    path = directory / CALLERS_FILE
    return parse_callers(path) if path.exists() else []


def _save(directory: Path, entries: list[CallerEntry]) -> Path:
    path = directory / CALLERS_FILE
    _write_private(path, "\n".join([_HEADER, *(e.line() for e in entries)]) + "\n")
    return path


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def ensure_credentials(directory: Path, callers: dict[str, tuple[str, ...]] = DEFAULT_CALLERS) -> Path:
    """Returns the callers file. The built-in callers' tokens that exist are kept, missing ones are made;
    other callers in the file (added with `add`) stay as they are."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    kept = [e for e in _entries(directory) if e.name not in callers]
    made = []
    for name, roles in callers.items():
        token_path = directory / f"{name}.token"
        if not token_path.exists() or not token_path.read_text().strip():
            _write_private(token_path, _new_token() + "\n")
        made.append(CallerEntry(name, frozenset(roles), digest(token_path.read_text().strip())))
    return _save(directory, made + kept)


def _check_roles(roles: list[str]) -> frozenset[str]:
    unknown = set(roles) - ROLES
    if not roles or unknown:
        raise ValueError(f"roles must be some of {sorted(ROLES)}; got {sorted(roles)}")
    return frozenset(roles)


def add_caller(directory: Path, name: str, roles: list[str]) -> str:
    """Returns the new caller's token (shown once; only its digest is kept)."""
    entries = _entries(directory)
    if any(e.name == name for e in entries):
        raise ValueError(f"a caller named {name!r} exists; rotate or remove it")
    if not name or any(c.isspace() or c == "#" for c in name):
        raise ValueError("a caller name has no spaces or '#'")
    token = _new_token()
    _save(directory, [*entries, CallerEntry(name, _check_roles(roles), digest(token))])
    return token


def rotate_caller(directory: Path, name: str, grace_seconds: float) -> str:
    """A new token for `name`; its current token keeps working for `grace_seconds` (0: stops now)."""
    entries = _entries(directory)
    current = [e for e in entries if e.name == name and e.not_after is None]
    if not current:
        raise ValueError(f"no caller named {name!r}")
    token = _new_token()
    now = time.time()
    others = [e for e in entries if e.name != name]
    in_grace = [e for e in entries if e.name == name and e.not_after is not None and e.not_after > now]
    old = [CallerEntry(e.name, e.roles, e.digest, now + grace_seconds) for e in current] if grace_seconds > 0 else []
    _save(directory, [*others, *in_grace, *old, CallerEntry(name, current[0].roles, digest(token))])
    return token


def remove_caller(directory: Path, name: str) -> None:
    entries = _entries(directory)
    if not any(e.name == name for e in entries):
        raise ValueError(f"no caller named {name!r}")
    _save(directory, [e for e in entries if e.name != name])


def list_callers(directory: Path) -> list[CallerEntry]:
    return _entries(directory)
