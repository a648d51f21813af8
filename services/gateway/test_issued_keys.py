"""The gateway's copy of the issued keys: applying the watch's updates, and what a secret is worth when."""

from __future__ import annotations

import hashlib
from pathlib import Path

from llmserve.metering.v1 import metering_pb2 as pb

from services.gateway.issued_keys import IssuedKeys
from services.gateway.limits.keeper import LimitsKeeper, LimitsSettings

NOW = 1_800_000_000.0


def _key(key_id: str, secret: str, version: int, **fields: object) -> pb.ApiKey:
    message = pb.ApiKey(key_id=key_id, version=version, secret_sha256=hashlib.sha256(secret.encode()).digest())
    for name in ("expires_at", "revoked_at", "previous_valid_until"):
        if name in fields:
            getattr(message, name).FromSeconds(int(fields.pop(name)))
    if "previous" in fields:
        message.previous_secret_sha256 = hashlib.sha256(str(fields.pop("previous")).encode()).digest()
    message.allowed_models.extend(fields.pop("models", []))
    return message


def test_updates_apply_in_version_order_and_a_full_one_starts_over() -> None:
    now = [NOW]
    keys = IssuedKeys(clock=lambda: now[0])
    keys.apply(pb.KeysUpdate(full=True, keys=[_key("k1", "s1", 1), _key("k2", "s2", 2, expires_at=NOW + 10)]))
    assert (keys.key_id("s1"), keys.key_id("s2"), keys.key_id("nope")) == ("k1", "k2", None)
    # An older version of a key arriving late changes nothing.
    keys.apply(pb.KeysUpdate(keys=[_key("k1", "s1", 3, revoked_at=NOW), _key("k1", "s1", 2)]))
    assert keys.key_id("s1") is None
    now[0] = NOW + 10
    assert keys.key_id("s2") is None
    keys.apply(pb.KeysUpdate(full=True, keys=[_key("k3", "s3", 9)]))
    assert (keys.key_id("s2"), keys.key_id("s3"), keys.count) == (None, "k3", 1)


def test_a_rotated_secret_works_until_its_grace_ends_and_models_are_checked() -> None:
    now = [NOW]
    keys = IssuedKeys(clock=lambda: now[0])
    keys.apply(pb.KeysUpdate(full=True, keys=[_key("k1", "old", 1, models=["m1"])]))
    keys.apply(pb.KeysUpdate(keys=[_key("k1", "new", 2, previous="old", previous_valid_until=NOW + 5, models=["m1"])]))
    assert (keys.key_id("old"), keys.key_id("new")) == ("k1", "k1")
    now[0] = NOW + 5
    assert (keys.key_id("old"), keys.key_id("new")) == (None, "k1")
    assert keys.allows("k1", "m1") and not keys.allows("k1", "m2") and keys.allows("static-key", "m2")


def test_the_keys_known_survive_a_restart_without_metering(tmp_path: Path) -> None:
    """The file holds what the last update left (hashes only); a new gateway starts with those keys."""
    known = tmp_path / "known-keys.pb"
    first = IssuedKeys(clock=lambda: NOW, known_file=known)
    first.apply(pb.KeysUpdate(full=True, keys=[_key("k1", "s1", 1), _key("k2", "s2", 2)]))
    first.apply(pb.KeysUpdate(keys=[_key("k2", "s2", 3, revoked_at=NOW)]))
    again = IssuedKeys(clock=lambda: NOW, known_file=known)
    assert (again.key_id("s1"), again.key_id("s2"), again.connected) == ("k1", None, False)
    known.write_bytes(b"\xff not a message")
    assert IssuedKeys(clock=lambda: NOW, known_file=known).key_id("s1") is None


class _NoCalls:
    """A metering client that must not be called."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"metering.{name} called")


async def test_a_key_is_limited_by_its_team_or_organisation_and_an_unlimited_one_costs_no_call() -> None:
    keys = IssuedKeys(clock=lambda: NOW)
    team_key = _key("k1", "s1", 1)
    team_key.team_id, team_key.org_id, team_key.team_allowed_models[:] = "team_a", "org_a", ["m1"]
    keys.apply(pb.KeysUpdate(full=True, keys=[team_key, _key("k2", "s2", 2)]))
    assert keys.levels("k1") == ("team_a", "org_a") and keys.levels("k2") == ()
    assert keys.allows("k1", "m1") and not keys.allows("k1", "m2") and keys.allows("k2", "m2")
    limits = LimitsKeeper(_NoCalls(), LimitsSettings(source="gw"), levels=keys.levels)  # type: ignore[arg-type]
    limits._known = True
    limits._limited = {"org_a": pb.KeyLimits(api_key_id="org_a", token_budget=10)}
    assert limits.limited("k1") and not limits.limited("k2")
    # A key nothing limits is admitted without asking metering anything.
    await limits.refuse_if_spent("k2")
