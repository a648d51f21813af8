"""API keys in the usage database (migration 0005): each change in one transaction, numbered from
key_versions so gateways can ask for what changed since the last number they saw, with an audit row."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace

from services.metering.keys import (
    DISPLAY_CHARACTERS,
    DuplicateKeyName,
    InvalidKeyChange,
    KeyNotFound,
    KeyRecord,
    check_expiry,
    check_grace,
    check_metadata,
    check_models,
    check_name,
    digest,
    new_key_id,
    new_secret,
)

_COLUMNS = (
    "key_id, name, display_prefix, secret_sha256, created_at, version, expires_at, revoked_at, allowed_models,"
    " metadata, previous_secret_sha256, previous_valid_until"
)


def _record(row: Sequence) -> KeyRecord:
    key_id, name, prefix, sha256, created, version, expires, revoked, models, metadata, previous, until = row
    return KeyRecord(
        key_id,
        name,
        prefix,
        sha256,
        created,
        int(version),
        expires,
        revoked,
        tuple(json.loads(models)),
        json.loads(metadata),
        previous,
        until,
    )


class KeyStore(ABC):
    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]: ...

    @abstractmethod
    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple]: ...

    def _next_version(self) -> int:
        """Inside a transaction: the next change number (on PostgreSQL this waits for any other key change)."""
        return int(self._rows("UPDATE key_versions SET version = version + 1 WHERE id = 1 RETURNING version")[0][0])

    def _write(self, record: KeyRecord, actor: str, action: str, now: float, detail: dict) -> None:
        self._rows("DELETE FROM api_keys WHERE key_id = ?", (record.key_id,))
        self._rows(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                record.key_id,
                record.name,
                record.display_prefix,
                record.secret_sha256,
                record.created_at,
                record.version,
                record.expires_at,
                record.revoked_at,
                json.dumps(list(record.allowed_models)),
                json.dumps(record.metadata, sort_keys=True),
                record.previous_secret_sha256,
                record.previous_valid_until,
            ),
        )
        self._rows(
            "INSERT INTO audit_log (at, version, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (now, record.version, actor, action, f"key:{record.key_id}", json.dumps(detail, sort_keys=True)),
        )

    def _key_record(self, key_id: str) -> KeyRecord:
        rows = self._rows(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))
        if not rows:
            raise KeyNotFound(f"key_id: no key has the id {key_id!r}")
        return _record(rows[0])

    def _name_free(self, name: str, key_id: str = "") -> None:
        if self._rows("SELECT 1 FROM api_keys WHERE name = ? AND key_id <> ?", (name, key_id)):
            raise DuplicateKeyName(f"name: a key named {name!r} exists already")

    def create_key(
        self,
        name: str,
        expires_at: float | None,
        allowed_models: list[str],
        metadata: dict[str, str],
        actor: str,
        now: float,
    ) -> tuple[KeyRecord, str]:
        """The new key and its secret (returned this once)."""
        name, models = check_name(name), check_models(allowed_models)
        expires_at, metadata = check_expiry(expires_at, now), check_metadata(metadata)
        secret = new_secret()
        with self._transaction():
            version = self._next_version()
            self._name_free(name)
            record = KeyRecord(
                new_key_id(),
                name,
                secret[:DISPLAY_CHARACTERS],
                digest(secret),
                now,
                version,
                expires_at,
                None,
                models,
                metadata,
            )
            self._write(record, actor, "create", now, {"name": name, "allowed_models": list(models)})
        return record, secret

    def update_key(
        self,
        key_id: str,
        actor: str,
        now: float,
        name: str | None = None,
        expires_at: float | None = None,
        clear_expiry: bool = False,
        allowed_models: list[str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> KeyRecord:
        changes: dict = {}
        if name is not None:
            changes["name"] = check_name(name)
        if clear_expiry:
            changes["expires_at"] = None
        elif expires_at is not None:
            changes["expires_at"] = check_expiry(expires_at, now)
        if allowed_models is not None:
            changes["allowed_models"] = check_models(allowed_models)
        if metadata is not None:
            changes["metadata"] = check_metadata(metadata)
        with self._transaction():
            version = self._next_version()
            record = self._key_record(key_id)
            if record.revoked_at is not None:
                raise InvalidKeyChange(f"key_id: {key_id} is revoked")
            if "name" in changes:
                self._name_free(changes["name"], key_id)
            record = replace(record, version=version, **changes)
            detail = {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}
            self._write(record, actor, "update", now, detail)
        return record

    def rotate_key(self, key_id: str, grace_seconds: float, actor: str, now: float) -> tuple[KeyRecord, str]:
        """A new secret; the replaced one works for grace_seconds more."""
        grace = check_grace(grace_seconds)
        secret = new_secret()
        with self._transaction():
            version = self._next_version()
            record = self._key_record(key_id)
            if record.revoked_at is not None:
                raise InvalidKeyChange(f"key_id: {key_id} is revoked")
            record = replace(
                record,
                version=version,
                display_prefix=secret[:DISPLAY_CHARACTERS],
                secret_sha256=digest(secret),
                previous_secret_sha256=record.secret_sha256 if grace else "",
                previous_valid_until=now + grace if grace else None,
            )
            self._write(record, actor, "rotate", now, {"grace_seconds": grace})
        return record, secret

    def revoke_key(self, key_id: str, actor: str, now: float) -> KeyRecord:
        """Revokes the key (and any secret a rotation left working); a key revoked already stays as it was."""
        with self._transaction():
            version = self._next_version()
            record = self._key_record(key_id)
            if record.revoked_at is not None:
                return record
            record = replace(
                record, version=version, revoked_at=now, previous_secret_sha256="", previous_valid_until=None
            )
            self._write(record, actor, "revoke", now, {})
        return record

    def get_key(self, key_id: str) -> KeyRecord:
        return self._key_record(key_id)

    def list_keys(self, include_revoked: bool) -> list[KeyRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        return [_record(r) for r in self._rows(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at, key_id")]

    def key_version(self) -> int:
        return int(self._rows("SELECT version FROM key_versions WHERE id = 1")[0][0])

    def keys_since(self, version: int) -> list[KeyRecord]:
        """Every key changed after `version` (0: every key), in the order of their changes."""
        rows = self._rows(f"SELECT {_COLUMNS} FROM api_keys WHERE version > ? ORDER BY version", (version,))
        return [_record(r) for r in rows]

    def audit(self, limit: int = 100) -> list[tuple]:
        """The latest changes first: (at, version, actor, action, subject, detail)."""
        return self._rows(
            "SELECT at, version, actor, action, subject, detail FROM audit_log ORDER BY version DESC LIMIT ?", (limit,)
        )
