"""Organisations, teams and their limits in metering's store, on both stores: a request fits every level or
is refused naming the one it does not fit, an organisation's budget shared by its teams is never overshot,
its time zone moves its periods, an organisation's admin sees only its own, and every change is audited."""

from __future__ import annotations

import calendar
import threading
from collections.abc import Callable

import pytest

from services.metering.account_errors import AlreadyExists, InvalidChange, NotFound
from services.metering.conftest import NOW, event
from services.metering.limits import OUT_OF_QUOTA, RATE_LIMITED, KeyLimits
from services.metering.store import UsageStore

LEASE = 30.0


def _org_team_key(store: UsageStore, time_zone: str = "UTC") -> tuple[str, str, str]:
    org = store.create_organization("acme", time_zone, {}, "admin", NOW)
    team = store.create_team(org.org_id, "search", [], {}, "admin", NOW)
    key, _ = store.create_key("search ci", None, [], {}, "admin", NOW, team_id=team.team_id)
    return org.org_id, team.team_id, key.key_id


def test_a_request_must_fit_the_key_its_team_and_its_organisation(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    org, team, key = _org_team_key(store)
    assert store.get_key(key).org_id == org
    store.set_limits(KeyLimits(key, token_budget=1000), NOW, "admin")
    store.set_limits(KeyLimits(team, requests_per_minute=2), NOW, "admin")
    store.set_limits(KeyLimits(org, token_budget=150), NOW, "admin")
    decision, standings = store.reserve("gw-1", "r1", key, 100, LEASE, NOW)
    assert decision.granted
    assert [(s.level, s.spent.budget_used) for s in standings] == [("key", 100), ("team", 100), ("organization", 100)]
    # The key's own budget has room; its organisation's does not, and the refusal says which.
    decision, standings = store.reserve("gw-1", "r2", key, 100, LEASE, NOW)
    assert (decision.granted, decision.refusal) == (False, OUT_OF_QUOTA)
    assert f"The organization {org}'s token budget" in decision.reason
    assert standings[2].remaining_budget == 50
    assert store.reserve("gw-1", "r3", key, 50, LEASE, NOW)[0].granted
    decision, _ = store.reserve("gw-1", "r4", key, 1, LEASE, NOW)
    assert (decision.refusal, f"The team {team}'s rate limit" in decision.reason) == (RATE_LIMITED, True)
    # The event replaces its reservation at every level: counted once, at its exact usage.
    store.commit([event(1, event_id="r1", source="gw-1", api_key_id=key)], NOW, {})
    used = [s.spent.budget_used for s in store.standing(key, NOW)]
    assert used == [15 + 50] * 3
    assert store.standing(team, NOW)[0].spent.requests_last_minute == 2
    assert store.reconcile(NOW) == []
    store.close()


def test_an_organisation_budget_shared_by_two_teams_is_never_overshot(open_store: Callable[[], UsageStore]) -> None:
    first = open_store()
    org = first.create_organization("acme", "UTC", {}, "admin", NOW)
    keys = []
    for name in ("a", "b"):
        team = first.create_team(org.org_id, name, [], {}, "admin", NOW)
        keys.append(first.create_key(f"{name} key", None, [], {}, "admin", NOW, team_id=team.team_id)[0].key_id)
    first.set_limits(KeyLimits(org.org_id, token_budget=1000), NOW)
    granted: list[int] = []

    def replica(name: str, key: str) -> None:
        store = open_store()
        for i in range(100):
            if store.reserve(name, f"{name}-{i}", key, 7, LEASE, NOW)[0].granted:
                granted.append(7)
        store.close()

    threads = [threading.Thread(target=replica, args=(f"gw-{n}", keys[n])) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 1000 // 7 * 7
    assert first.standing(org.org_id, NOW)[0].spent.budget_used == sum(granted)
    first.close()


def test_an_organisations_time_zone_moves_its_month(open_store: Callable[[], UsageStore]) -> None:
    """Tokyo's July starts at 15:00 UTC on June 30: spend before it is June's, spend after is July's;
    a key in no organisation keeps the UTC month."""
    store = open_store()
    org, team, key = _org_team_key(store, "Asia/Tokyo")
    store.set_limits(KeyLimits(org, token_budget=100, budget_period="month"), NOW)
    store.set_limits(KeyLimits("static", token_budget=100, budget_period="month"), NOW)
    tokyo_july = calendar.timegm((2027, 6, 30, 15, 0, 0))
    before, after = tokyo_july - 30.0, tokyo_july + 30.0
    store.commit([event(1, api_key_id=key, occurred_at=before), event(2, api_key_id="static")], before, {})
    assert store.standing(key, before - 1 + 30)[2].spent.budget_used == 15
    assert store.standing(key, after)[2].spent.budget_used == 0
    assert store.standing(key, after)[2].budget_reset_seconds == pytest.approx(
        calendar.timegm((2027, 7, 31, 15, 0, 0)) - after
    )
    assert store.standing("static", after)[0].spent.budget_used == 15
    assert store.reconcile(after) == []
    store.close()


def test_an_organisation_admin_sees_and_changes_only_its_own(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    mine, my_team, my_key = _org_team_key(store)
    other = store.create_organization("globex", "UTC", {}, "admin", NOW)
    their_team = store.create_team(other.org_id, "search", [], {}, "admin", NOW)
    their_key, _ = store.create_key("globex ci", None, [], {}, "admin", NOW, team_id=their_team.team_id)
    admin, _ = store.create_key("acme admin", None, [], {}, "admin", NOW, org_id=mine, role="org_admin")
    actor = admin.key_id
    # Its own: keys land in its organisation, its teams and limits are its to change.
    made, _ = store.create_key("acme new", None, [], {}, actor, NOW, scope=mine)
    assert made.org_id == mine and made.team_id == ""
    store.set_limits(KeyLimits(my_team, token_budget=10), NOW, actor, scope=mine)
    assert [t.team_id for t in store.list_teams(scope=mine)] == [my_team]
    assert {k.key_id for k in store.list_keys(False, scope=mine)} == {my_key, admin.key_id, made.key_id}
    # Another's: as if it did not exist.
    for attempt in (
        lambda: store.get_key(their_key.key_id, scope=mine),
        lambda: store.revoke_key(their_key.key_id, actor, NOW, scope=mine),
        lambda: store.create_team(other.org_id, "x", [], {}, actor, NOW, scope=mine),
        lambda: store.create_key("sneaky", None, [], {}, actor, NOW, team_id=their_team.team_id, scope=mine),
        lambda: store.update_key(my_key, actor, NOW, team_id=their_team.team_id, scope=mine),
        lambda: store.set_limits(KeyLimits(other.org_id, token_budget=1), NOW, actor, scope=mine),
        lambda: store.set_limits(KeyLimits("static", token_budget=1), NOW, actor, scope=mine),
        lambda: store.standing(their_key.key_id, NOW, scope=mine),
    ):
        with pytest.raises(NotFound):
            attempt()
    assert [o.org_id for o in store.list_organizations(scope=mine)] == [mine]
    assert store.get_key(their_key.key_id).revoked_at is None
    store.close()


def test_bad_changes_are_refused_whole_and_every_change_is_audited(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    org, team, key = _org_team_key(store)
    with pytest.raises(InvalidChange, match="time_zone"):
        store.create_organization("x", "Mars/Olympus", {}, "admin", NOW)
    with pytest.raises(AlreadyExists, match="name"):
        store.create_organization("acme", "UTC", {}, "admin", NOW)
    with pytest.raises(AlreadyExists, match="name"):
        store.create_team(org, "search", [], {}, "admin", NOW)
    with pytest.raises(NotFound, match="org_id"):
        store.create_team("org_nope", "x", [], {}, "admin", NOW)
    with pytest.raises(NotFound, match="team_id"):
        store.create_key("k", None, [], {}, "admin", NOW, team_id="team_nope")
    with pytest.raises(InvalidChange, match="role"):
        store.create_key("k", None, [], {}, "admin", NOW, role="org_admin")
    with pytest.raises(NotFound, match="api_key_id"):
        store.set_limits(KeyLimits("team_nope", token_budget=1), NOW, "admin")
    assert [k.name for k in store.list_keys(True)] == ["search ci"]
    store.update_team(team, "admin", NOW, allowed_models=["m1"])
    assert store.get_key(key).team_allowed_models == ("m1",)
    store.set_limits(KeyLimits(team, token_budget=5), NOW, "admin")
    actions = [(a[3], a[4].split(":")[0]) for a in reversed(store.audit())]
    assert actions == [
        ("create", "organization"),
        ("create", "team"),
        ("create", "key"),
        ("update", "team"),
        ("set_limits", "team"),
    ]
    store.close()
