"""A key's limits and its reservations against them, in the usage database: what a key has spent (the
running spend its events added to, services.metering.rollups, and its reservations, read in one
statement), a reservation taken only if it fits, settled to the exact usage, and replaced by its event
when that is committed (services.metering.store)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager

from services.metering.limits import WINDOW_SECONDS, Decision, KeyLimits, Spent, Standing, decide, period_start

# What a reservation counts: its exact usage once settled; while open, what it reserved as long as its
# holder's lease runs (a gateway gone stops holding it).
_COUNTED = (
    "CASE WHEN r.settled_tokens IS NOT NULL THEN r.settled_tokens"
    " WHEN h.lease_until >= ? THEN r.reserved_tokens ELSE 0 END"
)
_RESERVATIONS = "FROM reservations r LEFT JOIN reservation_holders h ON h.source = r.source WHERE r.api_key_id = ?"
# Everything a key has spent, in one statement (one snapshot: a commit that records an event and
# deletes its reservation is seen whole or not at all).
_WINDOW_CELLS = "FROM key_spend WHERE api_key_id = ? AND period = 'second' AND start > ?"
_SPENT = f"""SELECT
 (SELECT COALESCE(SUM(requests), 0) {_WINDOW_CELLS}),
 (SELECT COALESCE(SUM(tokens), 0) {_WINDOW_CELLS}),
 (SELECT MIN(start) {_WINDOW_CELLS}),
 (SELECT COALESCE(SUM(tokens), 0) FROM key_spend WHERE api_key_id = ? AND period = ? AND start = ?),
 (SELECT COUNT(*) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT COALESCE(SUM({_COUNTED}), 0) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT MIN(r.created_at) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT COALESCE(SUM({_COUNTED}), 0) {_RESERVATIONS} AND r.created_at >= ?),
 (SELECT COALESCE(SUM(r.reserved_tokens), 0) {_RESERVATIONS} AND r.settled_tokens IS NULL AND h.lease_until >= ?)"""
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

    def _lock_key(self, api_key_id: str) -> None:
        """Inside a reservation's transaction: one reservation of a key at a time, across replicas."""

    def set_limits(self, limits: KeyLimits, now: float) -> None:
        with self._transaction():
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

    def all_limits(self) -> list[KeyLimits]:
        return [KeyLimits(*row) for row in self._rows(f"SELECT {_LIMIT_COLUMNS} FROM key_limits ORDER BY api_key_id")]

    def limits_of(self, api_key_id: str) -> KeyLimits:
        rows = self._rows(f"SELECT {_LIMIT_COLUMNS} FROM key_limits WHERE api_key_id = ?", (api_key_id,))
        return KeyLimits(*rows[0]) if rows else KeyLimits(api_key_id)

    def _spent(self, limits: KeyLimits, now: float) -> Spent:
        key, minute, period = limits.api_key_id, now - WINDOW_SECONDS, period_start(limits.budget_period, now)
        # A second's cell counts while any part of it is inside the window (a request at most a second
        # older than the window still counts); it leaves the window a minute after its end.
        cells = now - WINDOW_SECONDS - 1
        # In _SPENT's order: each sub-select's key and start; a reservation sum first takes `now` (its holder's lease).
        params = (key, cells, key, cells, key, cells, key, limits.budget_period, int(period), key, minute)
        params += (now, key, minute, key, minute, now, key, period, key, now)
        row = self._rows(_SPENT, params)[0]
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

    def standing(self, api_key_id: str, now: float) -> Standing:
        limits = self.limits_of(api_key_id)
        return Standing(limits, self._spent(limits, now) if limits.any else Spent(), now)

    def reserve(
        self, source: str, event_id: str, api_key_id: str, tokens: int, lease_seconds: float, now: float
    ) -> tuple[Decision, Standing]:
        """Takes a reservation if it fits every limit of the key, all in one transaction. A key without
        limits is granted without a reservation; a reservation already taken (a retry) is granted again."""
        with self._transaction():
            self._renew(source, lease_seconds, now)
            self._lock_key(api_key_id)
            limits = self.limits_of(api_key_id)
            if not limits.any:
                return Decision(True), Standing(limits, Spent(), now)
            taken = self._rows("SELECT 1 FROM reservations WHERE source = ? AND event_id = ?", (source, event_id))
            spent = self._spent(limits, now)
            if taken:
                return Decision(True), Standing(limits, spent, now)
            decision = decide(limits, spent, tokens)
            if decision.granted:
                self._rows(
                    "INSERT INTO reservations"
                    " (source, event_id, api_key_id, reserved_tokens, settled_tokens, created_at)"
                    " VALUES (?, ?, ?, ?, NULL, ?)",
                    (source, event_id, api_key_id, tokens, now),
                )
                spent = spent.plus(tokens, now)
        return decision, Standing(limits, spent, now)

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
