"""Reservations against a key's limits on each store (SQLite, and PostgreSQL on the session's real
server): what counts, what comes back, and two replicas racing for one budget."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from services.metering.conftest import NOW, event
from services.metering.limits import OUT_OF_QUOTA, RATE_LIMITED, KeyLimits, period_end, period_start
from services.metering.store import UsageStore

LEASE = 30.0


def limited(store: UsageStore, **limits: object) -> None:
    store.set_limits(KeyLimits("team-a", **limits), NOW)


def test_a_key_without_limits_is_granted_without_a_reservation(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    decision, (standing, *_) = store.reserve("gw-1", "r1", "team-a", 10**9, LEASE, NOW)
    assert decision.granted and not standing.limits.any
    assert store._rows("SELECT COUNT(*) FROM reservations") == [(0,)]


def test_a_budget_counts_reservations_settles_and_events_never_twice(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    limited(store, token_budget=100)
    assert store.reserve("gw-1", "r1", "team-a", 60, LEASE, NOW)[0].granted
    decision, (standing, *_) = store.reserve("gw-1", "r2", "team-a", 60, LEASE, NOW)
    assert (decision.granted, decision.refusal) == (False, OUT_OF_QUOTA)
    assert (standing.spent.budget_used, standing.remaining_budget, standing.spent.reserved_tokens) == (60, 40, 60)
    # A retry of a granted reservation is granted again, not counted twice.
    assert store.reserve("gw-1", "r1", "team-a", 60, LEASE, NOW)[0].granted
    # The request used 15: the rest comes back at once.
    store.settle("gw-1", "r1", 15)
    assert store.standing("team-a", NOW)[0].spent.budget_used == 15
    # Its event replaces the reservation: still 15, not 30.
    store.commit([event(1, event_id="r1", source="gw-1")], NOW, {})
    assert store.standing("team-a", NOW)[0].spent.budget_used == 15
    assert store.reserve("gw-1", "r2", "team-a", 85, LEASE, NOW)[0].granted
    assert not store.reserve("gw-1", "r3", "team-a", 1, LEASE, NOW)[0].granted


def test_an_open_reservation_stops_counting_when_its_holders_lease_runs_out(
    open_store: Callable[[], UsageStore],
) -> None:
    store = open_store()
    limited(store, token_budget=100)
    assert store.reserve("gw-dead", "r1", "team-a", 90, LEASE, NOW)[0].granted
    assert not store.reserve("gw-2", "r2", "team-a", 90, LEASE, NOW + LEASE - 1)[0].granted
    # gw-dead renewed nothing: after its lease its reservation holds nothing.
    assert store.reserve("gw-2", "r2", "team-a", 90, LEASE, NOW + LEASE + 1)[0].granted


def test_per_minute_limits_slide(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    limited(store, requests_per_minute=2, tokens_per_minute=100)
    assert store.reserve("gw-1", "r1", "team-a", 50, LEASE, NOW)[0].granted
    assert store.reserve("gw-1", "r2", "team-a", 10, LEASE, NOW + 1)[0].granted
    decision, (standing, *_) = store.reserve("gw-1", "r3", "team-a", 1, LEASE, NOW + 2)
    assert (decision.refusal, standing.remaining_requests) == (RATE_LIMITED, 0)
    assert 57 < standing.window_reset_seconds <= 58
    limited(store, requests_per_minute=10, tokens_per_minute=100)
    assert "tokens per minute" in store.reserve("gw-1", "r3", "team-a", 41, LEASE, NOW + 2)[0].reason
    assert "too large" in store.reserve("gw-1", "r3", "team-a", 101, LEASE, NOW + 2)[0].reason
    # A minute after the first, its tokens have left the window.
    assert store.reserve("gw-1", "r3", "team-a", 41, LEASE, NOW + 61)[0].granted


def test_limits_change_and_go(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    limited(store, token_budget=10, budget_period="day")
    assert store.all_limits() == [KeyLimits("team-a", token_budget=10, budget_period="day")]
    assert not store.reserve("gw-1", "r1", "team-a", 11, LEASE, NOW)[0].granted
    store.set_limits(KeyLimits("team-a"), NOW)
    assert store.all_limits() == [] and store.reserve("gw-1", "r1", "team-a", 11, LEASE, NOW)[0].granted


def test_two_replicas_racing_for_one_budget_never_overshoot(open_store: Callable[[], UsageStore]) -> None:
    """Two stores (two metering replicas on PostgreSQL; two connections on one SQLite file) reserve
    200 times each from threads: the granted total never passes the budget."""
    first = open_store()
    limited(first, token_budget=1000)
    granted: list[int] = []

    def replica(name: str) -> None:
        store = open_store()
        for i in range(200):
            if store.reserve(name, f"{name}-{i}", "team-a", 7, LEASE, NOW)[0].granted:
                granted.append(7)

    threads = [threading.Thread(target=replica, args=(f"gw-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 1000 // 7 * 7
    assert first.standing("team-a", NOW)[0].spent.budget_used == sum(granted)


def test_periods() -> None:
    june_15 = 1781481600.0 + 3600  # 2026-06-15 01:00 UTC
    assert period_start("day", june_15) == 1781481600.0 and period_end("day", june_15) == 1781481600.0 + 86400
    assert period_start("month", june_15) == 1780272000.0  # 2026-06-01
    assert period_end("month", june_15) == 1782864000.0  # 2026-07-01
    assert period_start("total", june_15) == 0.0 and period_end("total", june_15) is None
    assert dataclasses.replace(KeyLimits("k"), token_budget=0).any


def test_a_settled_reservation_whose_event_never_came_keeps_counting_and_is_shown(
    open_store: Callable[[], UsageStore],
) -> None:
    """Before: pruned after an hour, so a key whose event was refused got its budget back (2,048 -> 0)."""
    store = open_store()
    limited(store, token_budget=5000)
    assert store.reserve("gw-1", "refused", "team-a", 3000, LEASE, NOW)[0].granted
    store.settle("gw-1", "refused", 2048)
    assert store.reserve("gw-1", "abandoned", "team-a", 100, LEASE, NOW)[0].granted
    later = NOW + 7200
    with store._transaction():
        store._prune_reservations(later)
    # The open one of a holder long gone went; the settled one stays, counted and shown.
    assert store._rows("SELECT event_id FROM reservations") == [("refused",)]
    assert store.standing("team-a", later)[0].spent.budget_used == 2048
    assert store.settled_without_event(later) == (1, 2048)
    assert store.settled_without_event(NOW) == (0, 0)
