"""Who may call: the callers file (one `name roles sha256-hex [not-after]` line per credential) and the
token files. A caller may have two lines while a rotation's grace period runs: the old token's line
carries the Unix time after which it no longer counts."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GATEWAY = "gateway"  # runs generations on the engine and bills them itself; records usage in metering
ADMIN = "admin"  # reads usage totals, series and counters, and the engine's load; manages models
GENERATE = "generate"  # an internal caller: generates and tokenizes; the engine meters its usage
ENGINE = "engine"  # the engine, recording in metering the usage of callers that do not bill their own
ROLES = frozenset({GATEWAY, ADMIN, GENERATE, ENGINE})


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"{path} is empty")
    return token


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]


@dataclass(frozen=True)
class CallerEntry:
    """One line of the callers file."""

    name: str
    roles: frozenset[str]
    digest: str
    # Unix time after which this token is refused (the old token of a rotation); None: no end.
    not_after: float | None = None

    def line(self) -> str:
        end = f" {self.not_after:.0f}" if self.not_after is not None else ""
        return f"{self.name} {','.join(sorted(self.roles))} {self.digest}{end}"


def parse_callers(path: Path) -> list[CallerEntry]:
    """Lines `name role[,role] sha256-hex [not-after]`; blank lines and `#` comments are skipped."""
    entries: list[CallerEntry] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (3, 4):
            raise ValueError(f"{path}:{number}: expected `name roles sha256-hex [not-after]`")
        name, roles_text, hex_digest = parts[:3]
        roles = frozenset(roles_text.split(","))
        if not roles <= ROLES:
            raise ValueError(f"{path}:{number}: unknown role {sorted(roles - ROLES)}; roles: {sorted(ROLES)}")
        if len(hex_digest) != 64 or any(c not in "0123456789abcdef" for c in hex_digest.lower()):
            raise ValueError(f"{path}:{number}: the third field must be a SHA-256 hex digest")
        try:
            not_after = float(parts[3]) if len(parts) == 4 else None
        except ValueError:
            raise ValueError(f"{path}:{number}: the fourth field must be a Unix time") from None
        entries.append(CallerEntry(name, roles, hex_digest.lower(), not_after))
    return entries


class CallerRegistry:
    def __init__(self, entries: list[CallerEntry]) -> None:
        self._entries = {e.digest: e for e in entries}

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_file(cls, path: Path) -> CallerRegistry:
        entries = parse_callers(path)
        if not entries:
            raise ValueError(f"{path} names no caller")
        return cls(entries)

    def identify(self, token: str, now: float | None = None) -> Caller | None:
        wanted = digest(token)
        now = time.time() if now is None else now
        for known, entry in self._entries.items():
            if hmac.compare_digest(known, wanted):
                if entry.not_after is not None and now > entry.not_after:
                    return None
                return Caller(entry.name, entry.roles)
        return None


class ReloadingCallers:
    """The callers file, read again when it changes (looked at no more than once a second), so callers
    are added, rotated and removed without a restart. A file that does not parse keeps the last good one."""

    def __init__(self, path: Path, check_every_seconds: float = 1.0) -> None:
        self._path = path
        self._check_every = check_every_seconds
        self._registry = CallerRegistry.from_file(path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    def __len__(self) -> int:
        return len(self._registry)

    def _file_stamp(self) -> tuple[int, int, int]:
        stat = os.stat(self._path)
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def identify(self, token: str) -> Caller | None:
        now = time.monotonic()
        if now - self._checked >= self._check_every:
            self._checked = now
            self._reload_if_changed()
        return self._registry.identify(token)

    def _reload_if_changed(self) -> None:
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            self._registry = CallerRegistry.from_file(self._path)
            log.info("callers file %s reloaded: %d credential(s)", self._path, len(self._registry))
        except (OSError, ValueError) as error:
            log.error("callers file %s not reloaded, keeping the last good one: %s", self._path, error)
