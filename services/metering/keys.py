"""API keys issued at run time: what a key record holds, how a secret is made and hashed, and what a change
to a key may ask. Metering makes every secret and keeps only its SHA-256 and a short display prefix."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from services.metering.account_errors import InvalidChange

SECRET_PREFIX = "sk-llm-"
DISPLAY_CHARACTERS = len(SECRET_PREFIX) + 4
MAX_NAME = 100
MAX_MODELS = 100
MAX_MODEL_NAME = 256
MAX_METADATA = 32
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 512
MAX_GRACE_SECONDS = 86400.0


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
    team_id: str = ""
    org_id: str = ""
    role: str = "member"
    # The team's list (read with the key, never written with it): a request's model must be in both.
    team_allowed_models: tuple[str, ...] = ()
    # Every response to this key carries its cost in `usage`.
    include_cost: bool = False


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidChange(f"name: must be 1 to {MAX_NAME} printable characters")
    return name


def check_expiry(expires_at: float | None, now: float) -> float | None:
    if expires_at is not None and expires_at <= now:
        raise InvalidChange("expires_at: the time is in the past")
    return expires_at


def check_models(models: list[str]) -> tuple[str, ...]:
    if len(models) > MAX_MODELS:
        raise InvalidChange(f"allowed_models: at most {MAX_MODELS} names")
    if any(not m or len(m) > MAX_MODEL_NAME for m in models):
        raise InvalidChange(f"allowed_models: each name is 1 to {MAX_MODEL_NAME} characters")
    return tuple(dict.fromkeys(models))


def check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    if len(metadata) > MAX_METADATA:
        raise InvalidChange(f"metadata: at most {MAX_METADATA} entries")
    for name, value in metadata.items():
        if not name or len(name) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InvalidChange(
                f"metadata: names are 1 to {MAX_METADATA_KEY} characters, values at most {MAX_METADATA_VALUE}"
            )
    return dict(metadata)


def check_grace(seconds: float) -> float:
    if not 0 <= seconds <= MAX_GRACE_SECONDS:
        raise InvalidChange(f"grace_seconds: must be between 0 and {MAX_GRACE_SECONDS:g}")
    return seconds


def checked_changes(
    name: str | None, allowed_models: list[str] | None, metadata: dict[str, str] | None
) -> dict[str, object]:
    """The fields a key or team change gives, checked (the others stay as they are)."""
    changes: dict[str, object] = {}
    if name is not None:
        changes["name"] = check_name(name)
    if allowed_models is not None:
        changes["allowed_models"] = check_models(allowed_models)
    if metadata is not None:
        changes["metadata"] = check_metadata(metadata)
    return changes
