"""API keys in metering's store, on both stores: issued, changed, rotated and revoked, each change numbered
and audited, and watched from another replica."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable

import pytest

from services.metering.account_errors import AlreadyExists, InvalidChange, NotFound
from services.metering.conftest import NOW
from services.metering.key_changes import ChangeListener
from services.metering.key_watch import KeyWatch
from services.metering.ledger import Ledger
from services.metering.metrics import MeteringMetrics
from services.metering.postgres_store import PostgresStore
from services.metering.store import UsageStore


def test_a_key_is_issued_changed_rotated_and_revoked(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    record, secret = store.create_key("team-a ci", NOW + 3600, ["m1"], {"owner": "a"}, "admin", NOW)
    assert secret.startswith("sk-llm-") and len(secret) > 40
    assert record.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert secret.startswith(record.display_prefix) and len(record.display_prefix) < 16
    assert store.get_key(record.key_id) == record
    # Nothing stored can give the secret back.
    stored = repr(store._rows("SELECT * FROM api_keys")) + repr(store._rows("SELECT * FROM audit_log"))
    assert secret not in stored and secret[len(record.display_prefix) :] not in stored
    with pytest.raises(AlreadyExists, match="name"):
        store.create_key("team-a ci", None, [], {}, "admin", NOW)
    with pytest.raises(InvalidChange, match="expires_at: the time is in the past"):
        store.create_key("other", NOW - 1, [], {}, "admin", NOW)
    with pytest.raises(NotFound):
        store.update_key("key_nope", "admin", NOW, name="x")
    changed = store.update_key(record.key_id, "admin", NOW, allowed_models=[], clear_expiry=True, name="renamed")
    assert (changed.name, changed.allowed_models, changed.expires_at) == ("renamed", (), None)
    assert changed.version > record.version
    rotated, new_secret = store.rotate_key(record.key_id, 60, "admin", NOW + 10)
    assert new_secret != secret and rotated.previous_secret_sha256 == record.secret_sha256
    assert rotated.previous_valid_until == NOW + 70
    revoked = store.revoke_key(record.key_id, "admin", NOW + 20)
    assert revoked.revoked_at == NOW + 20 and revoked.previous_secret_sha256 == ""
    assert store.revoke_key(record.key_id, "admin", NOW + 30).revoked_at == NOW + 20
    with pytest.raises(InvalidChange, match="revoked"):
        store.rotate_key(record.key_id, 0, "admin", NOW + 40)
    assert store.list_keys(include_revoked=False) == []
    assert [k.key_id for k in store.list_keys(include_revoked=True)] == [record.key_id]
    assert [a[3] for a in reversed(store.audit())] == ["create", "update", "rotate", "revoke"]
    store.close()


def test_changes_are_numbered_for_watchers(open_store: Callable[[], UsageStore]) -> None:
    first, second = open_store(), open_store()
    one, _ = first.create_key("one", None, [], {}, "admin", NOW)
    two, _ = second.create_key("two", None, [], {}, "admin", NOW)
    assert two.version == one.version + 1 == first.key_version()
    assert [k.name for k in first.keys_since(0)] == ["one", "two"]
    assert [k.name for k in first.keys_since(one.version)] == ["two"]
    first.revoke_key(one.key_id, "admin", NOW)
    assert [k.name for k in second.keys_since(two.version)] == ["one"]
    first.close()
    second.close()


async def test_a_watch_sees_every_key_then_each_change_from_another_replica(
    open_store: Callable[[], UsageStore],
) -> None:
    here, elsewhere = open_store(), open_store()
    here.create_key("before", None, [], {}, "admin", NOW)
    ledger = Ledger(here, MeteringMetrics(), 3600, 60)
    await ledger.start()
    watch = KeyWatch(ledger, poll_seconds=0.05)
    watch.start()
    updates = watch.updates()
    full, keys = await asyncio.wait_for(anext(updates), 5)
    assert full and [k.name for k in keys] == ["before"]
    made, _ = elsewhere.create_key("after", None, [], {}, "admin", NOW)
    full, keys = await asyncio.wait_for(anext(updates), 5)
    assert not full and [k.key_id for k in keys] == [made.key_id]
    elsewhere.revoke_key(made.key_id, "admin", NOW)
    full, keys = await asyncio.wait_for(anext(updates), 5)
    assert keys[0].revoked_at == NOW
    await updates.aclose()
    await watch.stop()
    await ledger.stop()
    elsewhere.close()


def test_another_replicas_key_change_is_heard_at_once(new_database: Callable[[], str]) -> None:
    """On PostgreSQL a change committed by one replica wakes the others' listeners (NOTIFY on commit)."""
    url = new_database()
    store = PostgresStore(url)
    heard = threading.Event()
    listener = ChangeListener(url, heard.set)
    listener.start()
    try:
        # The listener may start listening after a first change: change until it hears one.
        for attempt in range(50):
            store.create_key(f"heard-{attempt}", None, [], {}, "admin", NOW)
            if heard.wait(0.2):
                break
        assert heard.is_set()
        heard.clear()
        with store._transaction():
            store._next_version()
            assert not heard.wait(0.3)  # nothing is heard before the change commits
        assert heard.wait(5)
    finally:
        listener.stop()
        store.close()
