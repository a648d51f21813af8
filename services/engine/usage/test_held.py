"""The engine's hold on usage for gateways: leases, and the orders of failure the replicas issue names
(a gateway gone for good, two claiming at once, a claimer that dies mid-claim, a gateway gone and then
the engine restarted before anyone claimed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.engine.generation import FinishReason, Timings, Usage
from services.engine.usage.held import HeldUsageStore
from services.engine.usage.journal import HeldUsageJournal, HeldUsageKeeper


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def held_for(usage: HeldUsageStore, caller: str, request_id: str) -> None:
    usage.open(request_id, caller, b"ctx", "m")
    usage.finish(request_id, Usage(3, 5, 0), [FinishReason.STOP], Timings(), None)


def test_a_live_gateway_keeps_its_usage_and_a_silent_one_loses_it_to_one_claimer(clock: list[float]) -> None:
    usage = HeldUsageStore(lease_seconds=10)
    held_for(usage, "gw-a/1", "r1")
    held_for(usage, "gw-b/1", "r2")
    clock[0] += 8
    usage.renew("gw-a/1")
    clock[0] += 5
    # gw-a renewed 5 s ago; gw-b has been silent 13 s.
    claimed, still_open = usage.claim_expired("gw-c/1")
    assert [h.request_id for h in claimed] == ["r2"] and still_open == 0
    # A second claimer at the same moment gets nothing: the entry is gw-c's now.
    assert usage.claim_expired("gw-d/1") == ([], 0)
    usage.confirm(["r2"])
    assert len(usage) == 1


def test_a_claimer_that_dies_mid_claim_loses_the_entry_to_the_next(clock: list[float]) -> None:
    usage = HeldUsageStore(lease_seconds=10)
    held_for(usage, "gw-a/1", "r1")
    clock[0] += 11
    [claimed], _ = usage.claim_expired("gw-b/1")
    assert claimed.caller == "gw-b/1"
    # gw-b dies before metering acknowledged (it never confirms, never renews).
    clock[0] += 5
    assert usage.claim_expired("gw-c/1") == ([], 0)
    clock[0] += 6
    [again], _ = usage.claim_expired("gw-c/1")
    assert again.request_id == "r1" and again.caller == "gw-c/1"


def test_streams_still_running_are_reported_not_handed_over(clock: list[float]) -> None:
    usage = HeldUsageStore(lease_seconds=10)
    usage.open("r1", "gw-a/1", b"ctx", "m")
    clock[0] += 11
    assert usage.claim_expired("gw-b/1") == ([], 1)


async def test_held_usage_survives_an_engine_restart_and_is_claimable_at_once(tmp_path: Path) -> None:
    """A gateway lost for good, then the engine restarted before anyone claimed: the journal brings the
    held usage back, under a lease already run out; confirmed entries stay gone."""
    path = tmp_path / "held.sqlite3"
    before = HeldUsageStore(lease_seconds=10)
    keeper = HeldUsageKeeper(HeldUsageJournal(path), before, interval=0.01)
    await keeper.start()
    for i in range(5):
        held_for(before, "gw-a/1", f"r{i}")
    before.open("r-open", "gw-a/1", b"ctx", "m")
    before.confirm(["r0"])
    await keeper.flush()
    # SIGKILL: no stop(), no final flush.
    after = HeldUsageStore(lease_seconds=10)
    restarted = HeldUsageKeeper(HeldUsageJournal(path), after, interval=0.01)
    await restarted.start()
    claimed, still_open = after.claim_expired("gw-b/1")
    assert sorted(h.request_id for h in claimed) == ["r1", "r2", "r3", "r4"] and still_open == 0
    assert all(
        h.usage == Usage(3, 5, 0) and h.finish_reasons == [FinishReason.STOP] and h.usage_context == b"ctx"
        for h in claimed
    )
    after.confirm(["r1", "r2"])
    await restarted.stop()
    again = HeldUsageStore(lease_seconds=10)
    third = HeldUsageKeeper(HeldUsageJournal(path), again)
    await third.start()
    left, _ = again.claim_expired("gw-c/1")
    assert sorted(h.request_id for h in left) == ["r3", "r4"]
    await third.stop()


def test_without_a_journal_nothing_is_kept_for_one() -> None:
    usage = HeldUsageStore()
    for i in range(100):
        held_for(usage, "gw-a/1", f"r{i}")
        usage.confirm([f"r{i}"])
    assert usage.take_changes() == {}
