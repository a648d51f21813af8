"""Who may call: the callers file (one `name roles sha256-hex` line per caller) and the token files."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

GATEWAY = "gateway"  # runs generations on the engine, records usage in metering
ADMIN = "admin"  # reads usage totals, series and counters, and the engine's load
ROLES = frozenset({GATEWAY, ADMIN})


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


class CallerRegistry:
    def __init__(self, callers: dict[str, Caller]) -> None:
        self._by_digest = callers

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def from_file(cls, path: Path) -> CallerRegistry:
        """Lines `name role[,role] sha256-hex`; blank lines and `#` comments are skipped."""
        callers: dict[str, Caller] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3:
                raise ValueError(f"{path}:{number}: expected `name roles sha256-hex`")
            name, roles_text, hex_digest = parts
            roles = frozenset(roles_text.split(","))
            if not roles <= ROLES:
                raise ValueError(f"{path}:{number}: unknown role {sorted(roles - ROLES)}; roles: {sorted(ROLES)}")
            if len(hex_digest) != 64 or any(c not in "0123456789abcdef" for c in hex_digest.lower()):
                raise ValueError(f"{path}:{number}: the third field must be a SHA-256 hex digest")
            callers[hex_digest.lower()] = Caller(name, roles)
        if not callers:
            raise ValueError(f"{path} names no caller")
        return cls(callers)

    def identify(self, token: str) -> Caller | None:
        wanted = digest(token)
        for known, caller in self._by_digest.items():
            if hmac.compare_digest(known, wanted):
                return caller
        return None
