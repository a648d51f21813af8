"""Bearer API keys: each secret maps to a key id (which goes with the request's usage, the secret never does)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

HASHED_PREFIX = "sha256:"


def _digest(secret: str) -> bytes:
    """A secret given as `sha256:<64 hex>` is already its digest (key files need not hold secrets)."""
    if secret.startswith(HASHED_PREFIX):
        hex_digest = secret[len(HASHED_PREFIX) :]
        if len(hex_digest) == 64 and all(c in "0123456789abcdefABCDEF" for c in hex_digest):
            return bytes.fromhex(hex_digest)
        raise ValueError("a hashed API key must be `sha256:` and 64 hex digits")
    return hashlib.sha256(secret.encode()).digest()


class ApiKeys:
    """Compares in constant time: every configured key is checked, whichever matches."""

    def __init__(self, pairs: dict[str, str]) -> None:
        # key id -> sha256(secret); comparing digests keeps the time independent of the secret's length.
        self._digests = {key_id: _digest(secret) for key_id, secret in pairs.items()}

    @property
    def open(self) -> bool:
        return not self._digests

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._digests)

    def key_id(self, secret: str) -> str | None:
        digest = hashlib.sha256(secret.encode()).digest()
        found = None
        for key_id, expected in self._digests.items():
            if hmac.compare_digest(digest, expected):
                found = key_id
        return found

    @classmethod
    def parse(cls, inline: str, file: Path | None) -> ApiKeys:
        """`id:secret` (or `id:sha256:<hex of the secret's SHA-256>`) pairs, comma-separated inline and/or
        one per line in the file (# comments)."""
        entries = [e for e in inline.split(",") if e.strip()]
        if file is not None:
            entries += [
                line for line in file.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")
            ]
        pairs: dict[str, str] = {}
        for entry in entries:
            key_id, sep, secret = entry.strip().partition(":")
            if not sep or not key_id or not secret:
                raise ValueError(f"API key entries must look like `key_id:secret`, got {entry.strip()[:8]!r}...")
            if key_id in pairs:
                raise ValueError(f"API key id {key_id!r} is configured twice")
            pairs[key_id] = secret
        return cls(pairs)
