"""API keys issued at run time: what a key record holds, how a secret is made and hashed, and what a change
to a key may ask. Metering makes every secret and keeps only its SHA-256 and a short display prefix."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

SECRET_PREFIX = "sk-llm-"
DISPLAY_CHARACTERS = len(SECRET_PREFIX) + 4
MAX_NAME = 100
MAX_MODELS = 100
MAX_MODEL_NAME = 256
MAX_METADATA = 32
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 512
MAX_GRACE_SECONDS = 86400.0


class InvalidKeyChange(ValueError):
    """A change that cannot be made as asked (gRPC INVALID_ARGUMENT); the message starts with the field."""


class KeyNotFound(LookupError):
    """No key has that id (gRPC NOT_FOUND)."""


class DuplicateKeyName(ValueError):
    """Another key has that name (gRPC ALREADY_EXISTS)."""


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    name: str
    display_prefix: str
    secret_sha256: str
    created_at: float
    version: int
    expires_at: float | None = None
    revoked_at: float | None = None
    allowed_models: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    previous_secret_sha256: str = ""
    previous_valid_until: float | None = None


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidKeyChange(f"name: must be 1 to {MAX_NAME} printable characters")
    return name


def check_expiry(expires_at: float | None, now: float) -> float | None:
    if expires_at is not None and expires_at <= now:
        raise InvalidKeyChange("expires_at: the time is in the past")
    return expires_at


def check_models(models: list[str]) -> tuple[str, ...]:
    if len(models) > MAX_MODELS:
        raise InvalidKeyChange(f"allowed_models: at most {MAX_MODELS} names")
    if any(not m or len(m) > MAX_MODEL_NAME for m in models):
        raise InvalidKeyChange(f"allowed_models: each name is 1 to {MAX_MODEL_NAME} characters")
    return tuple(dict.fromkeys(models))


def check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    if len(metadata) > MAX_METADATA:
        raise InvalidKeyChange(f"metadata: at most {MAX_METADATA} entries")
    for name, value in metadata.items():
        if not name or len(name) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InvalidKeyChange(
                f"metadata: names are 1 to {MAX_METADATA_KEY} characters, values at most {MAX_METADATA_VALUE}"
            )
    return dict(metadata)


def check_grace(seconds: float) -> float:
    if not 0 <= seconds <= MAX_GRACE_SECONDS:
        raise InvalidKeyChange(f"grace_seconds: must be between 0 and {MAX_GRACE_SECONDS:g}")
    return seconds
