"""Limits of keys, teams and organisations and the reservations against them, in the usage database: what
a subject has spent (the running spend its events added to, services.metering.rollups, and its
reservations, read in one statement), a reservation taken only if it fits every level its key belongs to,
settled to the exact usage, and replaced by its event when that is committed (services.metering.store)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from services.metering.accounts import Membership
from services.metering.limits import (
    KEY,
    Decision,
    KeyLimits,
    Spent,
    Standing,
    decide,
    level_of,
    period_start,
)
from services.metering.spent_sql import Level, spent_of, spent_statement
from services.metering.store_primitives import StorePrimitives

_LIMIT_COLUMNS = "api_key_id, requests_per_minute, tokens_per_minute, token_budget, budget_period, money_budget_micro"
# A holder's lease renewed (each reservation renews its holder's).
_RENEW = (
    "INSERT INTO reservation_holders (source, lease_until) VALUES (?, ?)"
    " ON CONFLICT (source) DO UPDATE SET lease_until = excluded.lease_until"
)
# A key's place and the limits of every level it belongs to, in one statement: a row per subject with
# limits (none: the key is not limited anywhere). The stores add their row lock.
_LIMITED = (
    "m (key_id, team_id, org_id, time_zone) AS (SELECT ?, COALESCE(k.team_id, ''), COALESCE(k.org_id, ''),"
    " COALESCE(o.time_zone, 'UTC') FROM (SELECT 1) AS one LEFT JOIN api_keys k ON k.key_id = ?"
    " LEFT JOIN organizations o ON o.org_id = k.org_id)"
    " SELECT m.team_id, m.org_id, m.time_zone, "
    + ", ".join(f"l.{c.strip()}" for c in _LIMIT_COLUMNS.split(","))
    + " FROM key_limits l JOIN m ON l.api_key_id IN (m.key_id, m.team_id, m.org_id) ORDER BY l.api_key_id"
)
# Open reservations this old are deleted (a holder renews its lease far more often; one gone this long
# holds nothing). A settled reservation is kept until its event replaces it: if the event never comes
# (refused, lost), the settled usage still counts, and GetCounters shows it.
_RESERVATION_KEEP_SECONDS = 3600.0


class Reservations(StorePrimitives):
    @abstractmethod
    def memberships(self, key_ids: Sequence[str]) -> dict[str, Membership]: ...

    # Appended to _LIMITED inside a reservation's transaction: one reservation at a time per limited
    # subject, across replicas (rows locked in sorted order: two never wait on each other in a cycle).
    _LOCK_ROWS = ""
    # Whether the store renews the holder's lease in the same statement (a data-modifying WITH: one round
    # trip less per reservation); otherwise in a statement of its own.
    _RENEW_WITH_LIMITS = False

    @abstractmethod
    def check_subject(self, subject: str, scope: str | None) -> None: ...

    def set_limits(self, limits: KeyLimits, now: float, actor: str = "", scope: str | None = None) -> None:
        with self._transaction():
            version = self._next_version()
            self.check_subject(limits.api_key_id, scope)
            self._rows("DELETE FROM key_limits WHERE api_key_id = ?", (limits.api_key_id,))
            if limits.any:
                self._rows(
                    f"INSERT INTO key_limits ({_LIMIT_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        limits.api_key_id,
                        limits.requests_per_minute,
                        limits.tokens_per_minute,
                        limits.token_budget,
                        limits.budget_period,
                        limits.money_budget_micro,
                        now,
                    ),
                )
            detail = {
                "requests_per_minute": limits.requests_per_minute,
                "tokens_per_minute": limits.tokens_per_minute,
                "token_budget": limits.token_budget,
                "budget_period": limits.budget_period,
                "money_budget_micro": limits.money_budget_micro,
            }
            self._audit(now, version, actor, "set_limits", f"{level_of(limits.api_key_id)}:{limits.api_key_id}", detail)

    def all_limits(self) -> list[KeyLimits]:
        return [KeyLimits(*row) for row in self._rows(f"SELECT {_LIMIT_COLUMNS} FROM key_limits ORDER BY api_key_id")]

    def _limits_of(self, subjects: tuple[str, ...]) -> list[KeyLimits]:
        """Each subject's limits, in the order given (none set: no limits)."""
        marks = ", ".join("?" * len(subjects))
        rows = self._rows(f"SELECT {_LIMIT_COLUMNS} FROM key_limits WHERE api_key_id IN ({marks})", subjects)
        found = {row[0]: KeyLimits(*row) for row in rows}
        return [found.get(s, KeyLimits(s)) for s in subjects]

    def _spent(
        self, levels: list[KeyLimits], now: float, time_zone: str, taken: tuple[str, str] = ("", "")
    ) -> tuple[bool, list[Spent]]:
        """(whether the reservation `taken` exists, each level's Spent: nothing for a level without limits),
        in one statement."""
        limited = [
            Level(limits.api_key_id, limits.budget_period, int(period_start(limits.budget_period, now, time_zone)))
            for limits in levels
            if limits.any
        ]
        if not limited:
            return False, [Spent() for _ in levels]
        sql, params = spent_statement(limited, now, taken)
        was_taken, spent = spent_of(self._rows(sql, params)[0], len(limited))
        found = iter(spent)
        return was_taken, [next(found) if limits.any else Spent() for limits in levels]

    def _standings(self, member: Membership, now: float) -> tuple[Standing, ...]:
        levels = self._limits_of(member.subjects)
        _, spent = self._spent(levels, now, member.time_zone)
        return tuple(Standing(limits, used, now, member.time_zone) for limits, used in zip(levels, spent, strict=True))

    def _membership(self, subject: str) -> Membership:
        """A key's place; a team or organisation stands alone (with its organisation's time zone)."""
        if level_of(subject) == KEY:
            return self.memberships([subject])[subject]
        rows = self._rows(
            "SELECT o.time_zone FROM organizations o LEFT JOIN teams t ON t.org_id = o.org_id"
            " WHERE o.org_id = ? OR t.team_id = ?",
            (subject, subject),
        )
        return Membership(subject, time_zone=rows[0][0]) if rows else Membership(subject)

    def standing(self, subject: str, now: float, scope: str | None = None) -> tuple[Standing, ...]:
        """The subject's standing, and for a key each level above it."""
        with self._transaction():
            if scope is not None:
                self.check_subject(subject, scope)
            return self._standings(self._membership(subject), now)

    def reserve(
        self,
        source: str,
        event_id: str,
        api_key_id: str,
        tokens: int,
        lease_seconds: float,
        now: float,
        cost_micro: int = 0,
    ) -> tuple[Decision, tuple[Standing, ...]]:
        """Takes a reservation of `tokens` (costing `cost_micro`) if it fits every limit of the key, its team
        and its organisation, all in one transaction; a refusal names the first level it does not fit. A key
        with no limits at any level is granted without a reservation; a reservation already taken (a retry)
        is granted again."""
        with self._transaction():
            if self._RENEW_WITH_LIMITS:
                sql = f"WITH renewed AS ({_RENEW}), {_LIMITED}{self._LOCK_ROWS}"
                rows = self._rows(sql, (source, now + lease_seconds, api_key_id, api_key_id))
            else:
                self._renew(source, lease_seconds, now)
                rows = self._rows(f"WITH {_LIMITED}{self._LOCK_ROWS}", (api_key_id, api_key_id))
            if not rows:
                return Decision(True), (Standing(KeyLimits(api_key_id), Spent(), now),)
            member = Membership(api_key_id, *rows[0][:3])
            found = {row[3]: KeyLimits(*row[3:]) for row in rows}
            levels = [found.get(s, KeyLimits(s)) for s in member.subjects]
            taken, spent = self._spent(levels, now, member.time_zone, (source, event_id))
            decision = Decision(True)
            if not taken:
                for limits, used in zip(levels, spent, strict=True):
                    decision = decide(limits, used, tokens, cost_micro)
                    if not decision.granted:
                        break
                if decision.granted:
                    self._rows(
                        "INSERT INTO reservations (source, event_id, api_key_id, team_id, org_id, reserved_tokens,"
                        " reserved_cost_micro, settled_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                        (source, event_id, api_key_id, member.team_id, member.org_id, tokens, cost_micro, now),
                    )
                    spent = [
                        used.plus(tokens, now, cost_micro) if limits.any else used
                        for limits, used in zip(levels, spent, strict=True)
                    ]
        standings = tuple(
            Standing(limits, used, now, member.time_zone) for limits, used in zip(levels, spent, strict=True)
        )
        return decision, standings

    def settle(self, source: str, event_id: str, tokens: int, cost_micro: int | None = None) -> None:
        """The request's exact usage (and cost, when known) replaces what it reserved, until its event
        replaces the reservation."""
        with self._transaction():
            self._rows(
                "UPDATE reservations SET settled_tokens = ?, settled_cost_micro = ? WHERE source = ? AND event_id = ?",
                (tokens, cost_micro, source, event_id),
            )

    def renew(self, source: str, lease_seconds: float, now: float) -> None:
        with self._transaction():
            self._renew(source, lease_seconds, now)

    def _renew(self, source: str, lease_seconds: float, now: float) -> None:
        self._rows(_RENEW, (source, now + lease_seconds))

    def _prune_reservations(self, now: float) -> None:
        """Inside a transaction: open reservations older than the keep period go; settled ones stay."""
        self._rows(
            "DELETE FROM reservations WHERE settled_tokens IS NULL AND created_at < ?",
            (now - _RESERVATION_KEEP_SECONDS,),
        )

    def settled_without_event(self, now: float) -> tuple[int, int]:
        """(reservations, their tokens) settled more than the keep period ago whose event never arrived."""
        row = self._rows(
            "SELECT COUNT(*), COALESCE(SUM(settled_tokens), 0) FROM reservations"
            " WHERE settled_tokens IS NOT NULL AND created_at < ?",
            (now - _RESERVATION_KEEP_SECONDS,),
        )[0]
        return int(row[0]), int(row[1])
