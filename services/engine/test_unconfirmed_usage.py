"""The engine's hold on usage for gateways: leases, and the orders of failure the replicas issue names
(a gateway gone for good, two claiming at once, a claimer that dies mid-claim)."""

from __future__ import annotations

import time

import pytest

from services.engine.generation import FinishReason, Timings, Usage
from services.engine.unconfirmed_usage import UnconfirmedUsage


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def held_for(usage: UnconfirmedUsage, caller: str, request_id: str) -> None:
    usage.open(request_id, caller, b"ctx", "m")
    usage.finish(request_id, Usage(3, 5, 0), [FinishReason.STOP], Timings(), None)


def test_a_live_gateway_keeps_its_usage_and_a_silent_one_loses_it_to_one_claimer(clock: list[float]) -> None:
    usage = UnconfirmedUsage(lease_seconds=10)
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
    usage = UnconfirmedUsage(lease_seconds=10)
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
    usage = UnconfirmedUsage(lease_seconds=10)
    usage.open("r1", "gw-a/1", b"ctx", "m")
    clock[0] += 11
    assert usage.claim_expired("gw-b/1") == ([], 1)
