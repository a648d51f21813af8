"""The one statement that reads what every limited level of a key (the key, its team, its organisation) has
spent, and whether a reservation was taken already: one snapshot, so a commit that records an event and
deletes its reservation is seen whole or not at all. It passes once over the subjects' running spend
(the per-minute window's second cells and the budget periods' rows) and once over their reservations,
summing each level's share with conditional aggregates: its cost hardly grows with the number of levels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.metering.limits import KEY, ORGANIZATION, TEAM, WINDOW_SECONDS, Spent, level_of

# The reservations' column that names each level's subject.
_COLUMN = {KEY: "api_key_id", TEAM: "team_id", ORGANIZATION: "org_id"}
# What a reservation counts: its exact usage once settled; while open, what it reserved as long as its
# holder's lease runs (a gateway gone stops holding it).
_COUNTED = (
    "CASE WHEN r.settled_tokens IS NOT NULL THEN r.settled_tokens"
    " WHEN h.lease_until >= ? THEN r.reserved_tokens ELSE 0 END"
)
# Its cost likewise (settled without a cost: what it reserved).
_COUNTED_COST = (
    "CASE WHEN r.settled_tokens IS NOT NULL THEN COALESCE(r.settled_cost_micro, r.reserved_cost_micro)"
    " WHEN h.lease_until >= ? THEN r.reserved_cost_micro ELSE 0 END"
)
_SPEND_COLUMNS = 5
_HELD_COLUMNS = 6


@dataclass(frozen=True)
class Level:
    subject: str
    budget_period: str
    budget_start: int


def spent_statement(levels: list[Level], now: float, taken: tuple[str, str]) -> tuple[str, list[object]]:
    minute = now - WINDOW_SECONDS
    # A second's cell counts while any part of it is inside the window (a request at most a second older
    # than the window still counts); it leaves the window a minute after its end.
    cells = now - WINDOW_SECONDS - 1
    spend_columns, spend_params = [], []
    held_columns, held_params = [], []
    for level in levels:
        spend_columns += [
            "COALESCE(SUM(CASE WHEN s.api_key_id = ? AND s.period = 'second' THEN s.requests END), 0)",
            "COALESCE(SUM(CASE WHEN s.api_key_id = ? AND s.period = 'second' THEN s.tokens END), 0)",
            "MIN(CASE WHEN s.api_key_id = ? AND s.period = 'second' THEN s.start END)",
            "COALESCE(SUM(CASE WHEN s.api_key_id = ? AND s.period = ? AND s.start = ? THEN s.tokens END), 0)",
            "COALESCE(SUM(CASE WHEN s.api_key_id = ? AND s.period = ? AND s.start = ? THEN s.cost_micro END), 0)",
        ]
        subject, budget = level.subject, (level.budget_period, level.budget_start)
        spend_params += [subject, subject, subject, subject, *budget, subject, *budget]
        mine = f"r.{_COLUMN[level_of(subject)]} = ?"
        held_columns += [
            f"COALESCE(SUM(CASE WHEN {mine} AND r.created_at >= ? THEN 1 END), 0)",
            f"COALESCE(SUM(CASE WHEN {mine} AND r.created_at >= ? THEN {_COUNTED} END), 0)",
            f"MIN(CASE WHEN {mine} AND r.created_at >= ? THEN r.created_at END)",
            f"COALESCE(SUM(CASE WHEN {mine} AND r.created_at >= ? THEN {_COUNTED} END), 0)",
            f"COALESCE(SUM(CASE WHEN {mine} AND r.settled_tokens IS NULL AND h.lease_until >= ?"
            " THEN r.reserved_tokens END), 0)",
            f"COALESCE(SUM(CASE WHEN {mine} AND r.created_at >= ? THEN {_COUNTED_COST} END), 0)",
        ]
        held_params += [subject, minute, subject, minute, now, subject, minute, subject, level.budget_start, now]
        held_params += [subject, now, subject, level.budget_start, now]
    subjects = [level.subject for level in levels]
    marks = ", ".join("?" * len(levels))
    oldest_budget = min(level.budget_start for level in levels)
    sql = (
        "SELECT * FROM (SELECT COUNT(*) FROM reservations WHERE source = ? AND event_id = ?) AS taken,"
        f" (SELECT {', '.join(spend_columns)} FROM key_spend s WHERE s.api_key_id IN ({marks})"
        " AND ((s.period = 'second' AND s.start > ?) OR (s.period <> 'second' AND s.start >= ?))) AS spend,"
        f" (SELECT {', '.join(held_columns)} FROM reservations r"
        " LEFT JOIN reservation_holders h ON h.source = r.source"
        f" WHERE {' OR '.join(f'r.{_COLUMN[level_of(s)]} = ?' for s in subjects)}) AS held"
    )
    params = [*taken, *spend_params, *subjects, cells, oldest_budget, *held_params, *subjects]
    return sql, params


def spent_of(row: Sequence, count: int) -> tuple[bool, list[Spent]]:
    """Whether the reservation was taken, and each level's Spent, from the statement's one row."""
    spend, held = row[1 : 1 + _SPEND_COLUMNS * count], row[1 + _SPEND_COLUMNS * count :]
    out = []
    for n in range(count):
        mine = spend[_SPEND_COLUMNS * n : _SPEND_COLUMNS * (n + 1)]
        window_requests, window_tokens, window_oldest, budget, money = mine
        held_requests, held_tokens, held_oldest, held_budget, reserved, held_money = held[
            _HELD_COLUMNS * n : _HELD_COLUMNS * (n + 1)
        ]
        event_oldest = None if window_oldest is None else window_oldest + 1
        oldest = min((t for t in (event_oldest, held_oldest) if t is not None), default=None)
        out.append(
            Spent(
                requests_last_minute=int(window_requests + held_requests),
                tokens_last_minute=int(window_tokens + held_tokens),
                budget_used=int(budget + held_budget),
                reserved_tokens=int(reserved),
                oldest_in_window=oldest,
                money_used=int(money + held_money),
            )
        )
    return bool(row[0]), out
