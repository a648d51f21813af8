"""Organisations and teams in the usage database (migration 0006): each change in one transaction with an
audit row, and the membership of keys that reservations and commits count at every level."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace

from services.metering.account_errors import AlreadyExists, NotFound
from services.metering.accounts import (
    Membership,
    Organization,
    Team,
    check_time_zone,
    in_scope,
    new_org_id,
    new_team_id,
)
from services.metering.keys import check_metadata, check_models, check_name, checked_changes
from services.metering.limits import KEY, TEAM, UTC, level_of
from services.metering.store_primitives import StorePrimitives

_ORG_COLUMNS = "org_id, name, time_zone, created_at, metadata"
_TEAM_COLUMNS = "team_id, org_id, name, created_at, allowed_models, metadata"


def _org(row: Sequence) -> Organization:
    return Organization(row[0], row[1], row[2], row[3], json.loads(row[4]))


def _team(row: Sequence) -> Team:
    return Team(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), json.loads(row[5]))


class AccountStore(StorePrimitives):
    def _audit(self, now: float, version: int, actor: str, action: str, subject: str, detail: dict) -> None:
        self._rows(
            "INSERT INTO audit_log (at, version, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (now, version, actor, action, subject, json.dumps(detail, sort_keys=True)),
        )

    def create_organization(
        self, name: str, time_zone: str, metadata: dict[str, str], actor: str, now: float
    ) -> Organization:
        org = Organization(new_org_id(), check_name(name), check_time_zone(time_zone), now, check_metadata(metadata))
        with self._transaction():
            version = self._next_version()
            if self._rows("SELECT 1 FROM organizations WHERE name = ?", (org.name,)):
                raise AlreadyExists(f"name: an organization named {org.name!r} exists already")
            self._rows(
                f"INSERT INTO organizations ({_ORG_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (org.org_id, org.name, org.time_zone, now, json.dumps(org.metadata, sort_keys=True)),
            )
            self._audit(now, version, actor, "create", f"organization:{org.org_id}", {"name": org.name})
        return org

    def get_organization(self, org_id: str, scope: str | None = None) -> Organization:
        rows = self._rows(f"SELECT {_ORG_COLUMNS} FROM organizations WHERE org_id = ?", (org_id,))
        if not rows or not in_scope(org_id, scope):
            raise NotFound(f"org_id: no organization has the id {org_id!r}")
        return _org(rows[0])

    def list_organizations(self, scope: str | None = None) -> list[Organization]:
        rows = self._rows(f"SELECT {_ORG_COLUMNS} FROM organizations ORDER BY created_at, org_id")
        return [_org(r) for r in rows if in_scope(r[0], scope)]

    def create_team(
        self,
        org_id: str,
        name: str,
        allowed_models: list[str],
        metadata: dict[str, str],
        actor: str,
        now: float,
        scope: str | None = None,
    ) -> Team:
        models, metadata = check_models(allowed_models), check_metadata(metadata)
        team = Team(new_team_id(), org_id, check_name(name), now, models, metadata)
        with self._transaction():
            version = self._next_version()
            self.get_organization(org_id, scope)
            self._team_name_free(org_id, team.name)
            self._rows(
                f"INSERT INTO teams ({_TEAM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    team.team_id,
                    org_id,
                    team.name,
                    now,
                    json.dumps(list(team.allowed_models)),
                    json.dumps(team.metadata, sort_keys=True),
                ),
            )
            self._audit(now, version, actor, "create", f"team:{team.team_id}", {"name": team.name, "org_id": org_id})
        return team

    def _team_name_free(self, org_id: str, name: str, team_id: str = "") -> None:
        if self._rows("SELECT 1 FROM teams WHERE org_id = ? AND name = ? AND team_id <> ?", (org_id, name, team_id)):
            raise AlreadyExists(f"name: a team named {name!r} exists already in {org_id}")

    def update_team(
        self,
        team_id: str,
        actor: str,
        now: float,
        scope: str | None = None,
        name: str | None = None,
        allowed_models: list[str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Team:
        """A change of the team's models reaches gateways as a change of each of its keys."""
        changes = checked_changes(name, allowed_models, metadata)
        with self._transaction():
            version = self._next_version()
            team = replace(self.get_team(team_id, scope), **changes)
            if "name" in changes:
                self._team_name_free(team.org_id, team.name, team_id)
            self._rows(
                "UPDATE teams SET name = ?, allowed_models = ?, metadata = ? WHERE team_id = ?",
                (team.name, json.dumps(list(team.allowed_models)), json.dumps(team.metadata, sort_keys=True), team_id),
            )
            if "allowed_models" in changes:
                self._rows("UPDATE api_keys SET version = ? WHERE team_id = ?", (version, team_id))
            detail = {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}
            self._audit(now, version, actor, "update", f"team:{team_id}", detail)
        return team

    def get_team(self, team_id: str, scope: str | None = None) -> Team:
        rows = self._rows(f"SELECT {_TEAM_COLUMNS} FROM teams WHERE team_id = ?", (team_id,))
        if not rows or not in_scope(rows[0][1], scope):
            raise NotFound(f"team_id: no team has the id {team_id!r}")
        return _team(rows[0])

    def list_teams(self, org_id: str = "", scope: str | None = None) -> list[Team]:
        where, params = (" WHERE org_id = ?", (org_id,)) if org_id else ("", ())
        rows = self._rows(f"SELECT {_TEAM_COLUMNS} FROM teams{where} ORDER BY created_at, team_id", params)
        return [_team(r) for r in rows if in_scope(r[1], scope)]

    def memberships(self, key_ids: Iterable[str]) -> dict[str, Membership]:
        """Where each key sits (a key not issued here, such as a static one: in no team, UTC); the keys
        read already (since the last change number) are not read again."""
        known: dict[str, Membership] | None = self._cached("memberships")
        if known is None:
            known = self._cache("memberships", {})
        wanted = set(key_ids)
        ids = sorted(wanted - known.keys())
        if ids:
            known.update(self._read_memberships(ids))
        return {k: known[k] for k in wanted}

    def _read_memberships(self, ids: list[str]) -> dict[str, Membership]:
        out = {k: Membership(k) for k in ids}
        rows = self._rows(
            "SELECT k.key_id, k.team_id, k.org_id, o.time_zone FROM api_keys k"
            " LEFT JOIN organizations o ON o.org_id = k.org_id"
            f" WHERE k.key_id IN ({', '.join('?' * len(ids))})",
            ids,
        )
        for key_id, team_id, org_id, time_zone in rows:
            out[key_id] = Membership(key_id, team_id, org_id, time_zone or UTC)
        return out

    def check_subject(self, subject: str, scope: str | None) -> None:
        """NotFound unless the subject of limits exists and is in scope: a team or organisation must exist;
        a key id not issued here (a static key) is the operator's alone."""
        level = level_of(subject)
        table, column = {KEY: ("api_keys", "key_id"), TEAM: ("teams", "team_id")}.get(
            level, ("organizations", "org_id")
        )
        rows = self._rows(f"SELECT org_id FROM {table} WHERE {column} = ?", (subject,))
        if (not rows and (level != KEY or scope is not None)) or (rows and not in_scope(rows[0][0], scope)):
            raise NotFound(f"api_key_id: no {level} has the id {subject!r}")
