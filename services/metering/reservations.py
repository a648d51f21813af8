"""Limits of keys, teams and organisations and the reservations against them, in the usage database: what
a subject has spent (the running spend its events added to, services.metering.rollups, and its
reservations, read in one statement), a reservation taken only if it fits every level its key belongs to,
settled to the exact usage, and replaced by its event when that is committed (services.metering.store)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager

from services.metering.accounts import Membership
from services.metering.limits import (
    KEY,
    ORGANIZATION,
    TEAM,
    WINDOW_SECONDS,
    Decision,
    KeyLimits,
    Spent,
    Standing,
    decide,
    level_of,
    period_start,
)

# What a reservation counts: its exact usage once settled; while open, what it reserved as long as its
# holder's lease runs (a gateway gone stops holding it).
_COUNTED = (
    "CASE WHEN r.settled_tokens IS NOT NULL THEN r.settled_tokens"
    " WHEN h.lease_until >= ? THEN r.reserved_tokens ELSE 0 END"
)
_RESERVATIONS = "FROM reservations r LEFT JOIN reservation_holders h ON h.source = r.source WHERE r.{column} = ?"
# Everything a key has spent, in one statement (one snapshot: a commit that records an event and
# deletes its reservation is seen whole or not at all).
_WINDOW_CELLS = "FROM key_spend WHERE api_key_id = ? AND period = 'second' AND start > ?"
_SPENT_OF = f"""SELECT
 (SELECT COALESCE(SUM(requests), 0) {_WINDOW_CELLS}),
 (SELECT COALESCE(SUM(tokens), 0) {_WINDOW_CELLS}),
 (SELECT MIN(start) {_WINDOW_CELLS}),
 (SELECT COALESCE(SUM(tokens), 0) FROM key_spend WHERE api_key_id = ? AND period = ? AND start = ?),
 (SELECT COUNT(*) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT COALESCE(SUM({_COUNTED}), 0) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT MIN(r.created_at) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT COALESCE(SUM({_COUNTED}), 0) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT COALESCE(SUM(r.reserved_tokens), 0) {_RESERVATIONS} AND r.settled_tokens IS NULL AND h.lease_until >= ?)"""
# The reservations' column that names each level's subject.
_SPENT = {
    level: _SPENT_OF.replace("{column}", column)
    for level, column in ((KEY, "api_key_id"), (TEAM, "team_id"), (ORGANIZATION, "org_id"))
}
_LIMIT_COLUMNS = "api_key_id, requests_per_minute, tokens_per_minute, token_budget, budget_period"
# Open reservations this old are deleted (a holder renews its lease far more often; one gone this long
# holds nothing). A settled reservation is kept until its event replaces it: if the event never comes
# (refused, lost), the settled usage still counts, and GetCounters shows it.
_RESERVATION_KEEP_SECONDS = 3600.0


class Reservations(ABC):
    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]: ...

    @abstractmethod
    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """Runs one statement written with `?` placeholders; its rows."""

    @abstractmethod
    def memberships(self, key_ids: Sequence[str]) -> dict[str, Membership]: ...

    @abstractmethod
    def _next_version(self) -> int: ...

    @abstractmethod
    def _audit(self, now: float, version: int, actor: str, action: str, subject: str, detail: dict) -> None: ...

    def _lock_subjects(self, subjects: list[str]) -> None:
        """Inside a reservation's transaction: one reservation at a time per limited subject, across
        replicas (taken in sorted order, so two reservations never wait on each other in a cycle)."""

    @abstractmethod
    def check_subject(self, subject: str, scope: str | None) -> None: ...

    def set_limits(self, limits: KeyLimits, now: float, actor: str = "", scope: str | None = None) -> None:
        with self._transaction():
            version = self._next_version()
            self.check_subject(limits.api_key_id, scope)
            self._rows("DELETE FROM key_limits WHERE api_key_id = ?", (limits.api_key_id,))
            if limits.any:
                self._rows(
                    f"INSERT INTO key_limits ({_LIMIT_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        limits.api_key_id,
                        limits.requests_per_minute,
                        limits.tokens_per_minute,
                        limits.token_budget,
                        limits.budget_period,
                        now,
                    ),
                )
            detail = {
                "requests_per_minute": limits.requests_per_minute,
                "tokens_per_minute": limits.tokens_per_minute,
                "token_budget": limits.token_budget,
                "budget_period": limits.budget_period,
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

    def _spent(self, limits: KeyLimits, now: float, time_zone: str) -> Spent:
        subject, minute = limits.api_key_id, now - WINDOW_SECONDS
        period = period_start(limits.budget_period, now, time_zone)
        # A second's cell counts while any part of it is inside the window (a request at most a second
        # older than the window still counts); it leaves the window a minute after its end.
        cells = now - WINDOW_SECONDS - 1
        # In _SPENT's order: each sub-select's subject and start; a reservation sum first takes `now`
        # (its holder's lease).
        params = (subject, cells, subject, cells, subject, cells, subject, limits.budget_period, int(period))
        params += (subject, minute, now, subject, minute, subject, minute, now, subject, period, subject, now)
        row = self._rows(_SPENT[level_of(subject)], params)[0]
        event_requests, event_tokens, event_budget = row[0], row[1], row[3]
        event_oldest = None if row[2] is None else row[2] + 1
        held_requests, held_tokens, held_oldest, held_budget, reserved = row[4], row[5], row[6], row[7], row[8]
        oldest = min((t for t in (event_oldest, held_oldest) if t is not None), default=None)
        return Spent(
            requests_last_minute=int(event_requests + held_requests),
            tokens_last_minute=int(event_tokens + held_tokens),
            budget_used=int(event_budget + held_budget),
            reserved_tokens=int(reserved),
            oldest_in_window=oldest,
        )

    def _standings(self, member: Membership, now: float) -> tuple[Standing, ...]:
        zone = member.time_zone
        return tuple(
            Standing(limits, self._spent(limits, now, zone) if limits.any else Spent(), now, zone)
            for limits in self._limits_of(member.subjects)
        )

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
        self, source: str, event_id: str, api_key_id: str, tokens: int, lease_seconds: float, now: float
    ) -> tuple[Decision, tuple[Standing, ...]]:
        """Takes a reservation if it fits every limit of the key, its team and its organisation, all in one
        transaction; a refusal names the first level it does not fit. A key with no limits at any level is
        granted without a reservation; a reservation already taken (a retry) is granted again."""
        with self._transaction():
            self._renew(source, lease_seconds, now)
            member = self.memberships([api_key_id])[api_key_id]
            levels = self._limits_of(member.subjects)
            if not any(limits.any for limits in levels):
                return Decision(True), tuple(Standing(limits, Spent(), now, member.time_zone) for limits in levels)
            self._lock_subjects(sorted(limits.api_key_id for limits in levels if limits.any))
            taken = self._rows("SELECT 1 FROM reservations WHERE source = ? AND event_id = ?", (source, event_id))
            spent = [self._spent(limits, now, member.time_zone) if limits.any else Spent() for limits in levels]
            decision = Decision(True)
            if not taken:
                for limits, used in zip(levels, spent, strict=True):
                    decision = decide(limits, used, tokens)
                    if not decision.granted:
                        break
                if decision.granted:
                    self._rows(
                        "INSERT INTO reservations (source, event_id, api_key_id, team_id, org_id, reserved_tokens,"
                        " settled_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                        (source, event_id, api_key_id, member.team_id, member.org_id, tokens, now),
                    )
                    spent = [used.plus(tokens, now) if limits.any else used for limits, used in zip(levels, spent)]
        standings = tuple(
            Standing(limits, used, now, member.time_zone) for limits, used in zip(levels, spent, strict=True)
        )
        return decision, standings

    def settle(self, source: str, event_id: str, tokens: int) -> None:
        """The request's exact usage replaces what it reserved (until its event replaces the reservation)."""
        with self._transaction():
            self._rows(
                "UPDATE reservations SET settled_tokens = ? WHERE source = ? AND event_id = ?",
                (tokens, source, event_id),
            )

    def renew(self, source: str, lease_seconds: float, now: float) -> None:
        with self._transaction():
            self._renew(source, lease_seconds, now)

    def _renew(self, source: str, lease_seconds: float, now: float) -> None:
        self._rows(
            "INSERT INTO reservation_holders (source, lease_until) VALUES (?, ?)"
            " ON CONFLICT (source) DO UPDATE SET lease_until = excluded.lease_until",
            (source, now + lease_seconds),
        )

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
