"""API keys in the usage database (migration 0005): each change in one transaction, numbered from
key_versions so gateways can ask for what changed since the last number they saw, with an audit row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

from services.metering.account_errors import AlreadyExists, InvalidChange, NotFound
from services.metering.account_store import AccountStore
from services.metering.accounts import ORG_ADMIN, check_role, in_scope
from services.metering.keys import (
    DISPLAY_CHARACTERS,
    KeyRecord,
    check_expiry,
    check_grace,
    check_metadata,
    check_models,
    check_name,
    checked_changes,
    digest,
    new_key_id,
    new_secret,
)

_COLUMNS = (
    "key_id, name, display_prefix, secret_sha256, created_at, version, expires_at, revoked_at, allowed_models,"
    " metadata, previous_secret_sha256, previous_valid_until, team_id, org_id, role, include_cost"
)
_SELECT = (
    "SELECT " + ", ".join(f"k.{c.strip()}" for c in _COLUMNS.split(",")) + ", COALESCE(t.allowed_models, '[]')"
    " FROM api_keys k LEFT JOIN teams t ON t.team_id = k.team_id"
)


def _record(row: Sequence) -> KeyRecord:
    key_id, name, prefix, sha256, created, version, expires, revoked, models, metadata, previous, until = row[:12]
    team_id, org_id, role, include_cost, team_models = row[12:]
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
        team_id,
        org_id,
        role,
        tuple(json.loads(team_models)),
        bool(include_cost),
    )


class KeyStore(AccountStore):
    def _next_version(self) -> int:
        """Inside a transaction: the next change number (on PostgreSQL this waits for any other key change,
        and the other replicas hear of it when the transaction commits)."""
        self._announce_change()
        return int(self._rows("UPDATE key_versions SET version = version + 1 WHERE id = 1 RETURNING version")[0][0])

    def _announce_change(self) -> None:
        """Inside a change's transaction: tell the other replicas when it commits (PostgreSQL's NOTIFY)."""

    def _write(self, record: KeyRecord, actor: str, action: str, now: float, detail: dict) -> None:
        self._rows("DELETE FROM api_keys WHERE key_id = ?", (record.key_id,))
        self._rows(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                record.team_id,
                record.org_id,
                record.role,
                int(record.include_cost),
            ),
        )
        self._audit(now, record.version, actor, action, f"key:{record.key_id}", detail)

    def _key_record(self, key_id: str, scope: str | None = None) -> KeyRecord:
        rows = self._rows(f"{_SELECT} WHERE k.key_id = ?", (key_id,))
        if not rows or not in_scope(rows[0][13], scope):
            raise NotFound(f"key_id: no key has the id {key_id!r}")
        return _record(rows[0])

    def _place(self, team_id: str, org_id: str, role: str, scope: str | None) -> tuple[str, str, str]:
        """(team, organisation, role) of a key placed as asked: a team gives its organisation; an
        organisation's admin confined to it places keys there; an org_admin key needs an organisation."""
        role = check_role(role)
        if team_id:
            team = self.get_team(team_id, scope)
            if org_id and org_id != team.org_id:
                raise InvalidChange(f"org_id: team {team_id} belongs to {team.org_id}, not {org_id}")
            org_id = team.org_id
        elif org_id:
            self.get_organization(org_id, scope)
        elif scope is not None:
            org_id = scope
        if role == ORG_ADMIN and not org_id:
            raise InvalidChange("role: an org_admin key needs an organization (org_id or team_id)")
        return team_id, org_id, role

    def _name_free(self, name: str, key_id: str = "") -> None:
        if self._rows("SELECT 1 FROM api_keys WHERE name = ? AND key_id <> ?", (name, key_id)):
            raise AlreadyExists(f"name: a key named {name!r} exists already")

    def create_key(
        self,
        name: str,
        expires_at: float | None,
        allowed_models: list[str],
        metadata: dict[str, str],
        actor: str,
        now: float,
        team_id: str = "",
        org_id: str = "",
        role: str = "",
        scope: str | None = None,
        include_cost: bool = False,
    ) -> tuple[KeyRecord, str]:
        """The new key and its secret (returned this once)."""
        name, models = check_name(name), check_models(allowed_models)
        expires_at, metadata = check_expiry(expires_at, now), check_metadata(metadata)
        secret = new_secret()
        with self._transaction():
            version = self._next_version()
            self._name_free(name)
            team_id, org_id, role = self._place(team_id, org_id, role, scope)
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
                team_id=team_id,
                org_id=org_id,
                role=role,
                include_cost=include_cost,
            )
            detail = {"name": name, "allowed_models": list(models), "team_id": team_id, "org_id": org_id, "role": role}
            detail["include_cost"] = include_cost
            self._write(record, actor, "create", now, detail)
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
        team_id: str | None = None,
        role: str | None = None,
        scope: str | None = None,
        include_cost: bool | None = None,
    ) -> KeyRecord:
        """team_id "" takes the key out of its team (it stays in its organisation)."""
        changes = checked_changes(name, allowed_models, metadata)
        if include_cost is not None:
            changes["include_cost"] = include_cost
        if clear_expiry:
            changes["expires_at"] = None
        elif expires_at is not None:
            changes["expires_at"] = check_expiry(expires_at, now)
        with self._transaction():
            version = self._next_version()
            record = self._key_record(key_id, scope)
            if record.revoked_at is not None:
                raise InvalidChange(f"key_id: {key_id} is revoked")
            if team_id is not None or role is not None:
                new_team = record.team_id if team_id is None else team_id
                placed = self._place(new_team, "" if new_team else record.org_id, role or record.role, scope)
                changes.update(zip(("team_id", "org_id", "role"), placed, strict=True))
            if "name" in changes:
                self._name_free(changes["name"], key_id)
            record = replace(record, version=version, **changes)
            detail = {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}
            self._write(record, actor, "update", now, detail)
        return record

    def rotate_key(
        self, key_id: str, grace_seconds: float, actor: str, now: float, scope: str | None = None
    ) -> tuple[KeyRecord, str]:
        """A new secret; the replaced one works for grace_seconds more."""
        grace = check_grace(grace_seconds)
        secret = new_secret()
        with self._transaction():
            version = self._next_version()
            record = self._key_record(key_id, scope)
            if record.revoked_at is not None:
                raise InvalidChange(f"key_id: {key_id} is revoked")
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

    def revoke_key(self, key_id: str, actor: str, now: float, scope: str | None = None) -> KeyRecord:
        """Revokes the key (and any secret a rotation left working); a key revoked already stays as it was."""
        with self._transaction():
            version = self._next_version()
            record = self._key_record(key_id, scope)
            if record.revoked_at is not None:
                return record
            record = replace(
                record, version=version, revoked_at=now, previous_secret_sha256="", previous_valid_until=None
            )
            self._write(record, actor, "revoke", now, {})
        return record

    def get_key(self, key_id: str, scope: str | None = None) -> KeyRecord:
        return self._key_record(key_id, scope)

    def list_keys(self, include_revoked: bool, scope: str | None = None, team_id: str = "") -> list[KeyRecord]:
        where, params = ["1 = 1"], []
        if not include_revoked:
            where.append("k.revoked_at IS NULL")
        if scope is not None:
            where.append("k.org_id = ?")
            params.append(scope)
        if team_id:
            where.append("k.team_id = ?")
            params.append(team_id)
        rows = self._rows(f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY k.created_at, k.key_id", params)
        return [_record(r) for r in rows]

    def key_version(self) -> int:
        return int(self._rows("SELECT version FROM key_versions WHERE id = 1")[0][0])

    def keys_since(self, version: int) -> list[KeyRecord]:
        """Every key changed after `version` (0: every key), in the order of their changes."""
        rows = self._rows(f"{_SELECT} WHERE k.version > ? ORDER BY k.version", (version,))
        return [_record(r) for r in rows]

    def audit(self, limit: int = 100) -> list[tuple]:
        """The latest changes first: (at, version, actor, action, subject, detail)."""
        return self._rows(
            "SELECT at, version, actor, action, subject, detail FROM audit_log ORDER BY version DESC LIMIT ?", (limit,)
        )
