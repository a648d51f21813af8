"""The outbox, on both stores: written in the commit that records the events (only once a replica
delivers that kind), taken with a lease, put off, dead-lettered with the reason; budget alerts written
once per threshold and period; the file export's pages; and the pieces a delivery is made of (the
CloudEvent, its signature, what an answer means)."""

from __future__ import annotations

import json
from collections.abc import Callable

from services.metering import webhook_signature
from services.metering.budget_alerts import crossed
from services.metering.cloudevents import cloud_event
from services.metering.conftest import NOW, event
from services.metering.delivery import DEAD_LETTERED, DELIVERED, RETRIED, backoff, outcome
from services.metering.limits import KeyLimits
from services.metering.outbox_store import ALERTS, CLOUDEVENTS
from services.metering.price_file import parse
from services.metering.store import UsageStore

BOOK = "currency: USD\nprices:\n  - {model: m1, prompt: '1', completion: '2'}\n"


def test_commits_name_their_new_events_in_the_outbox_once_a_replica_pushes(
    open_store: Callable[[], UsageStore],
) -> None:
    store = open_store()
    store.commit([event(0)], NOW, {})
    assert store.claim(CLOUDEVENTS, NOW, 30, 10) == []  # nobody pushes: nothing written
    store.enable_delivery(CLOUDEVENTS, NOW)
    store.enable_delivery(CLOUDEVENTS, NOW + 1)  # again (another replica): no change
    store.commit([event(1), event(2), event(0)], NOW, {})  # ev-0 is a duplicate
    store.commit([event(1)], NOW, {})  # nothing new: no row
    (claimed,) = store.claim(CLOUDEVENTS, NOW, 30, 10)
    assert sorted(json.loads(claimed.body)) == [["gw-1", "ev-1"], ["gw-1", "ev-2"]] and claimed.attempts == 1
    assert store.claim(CLOUDEVENTS, NOW + 29, 30, 10) == []  # leased
    rows = store.usage_rows_of([tuple(k) for k in json.loads(claimed.body)])
    assert sorted(r.event_id for r in rows) == ["ev-1", "ev-2"]
    (again,) = store.claim(CLOUDEVENTS, NOW + 31, 30, 10)  # the holder died: due again
    assert again.attempts == 2
    store.put_off([again.outbox_id], NOW + 100, "HTTP 503")
    assert store.claim(CLOUDEVENTS, NOW + 99, 30, 10) == []
    status = store.outbox_status(NOW + 50)[CLOUDEVENTS]
    assert (status.pending, status.oldest_seconds, status.dead_letters) == (1, 50.0, 0)
    (third,) = store.claim(CLOUDEVENTS, NOW + 100, 30, 10)
    store.dead_letter([third.outbox_id], NOW + 101, "HTTP 400: bad batch")
    status = store.outbox_status(NOW + 102)[CLOUDEVENTS]
    assert (status.pending, status.dead_letters, status.last_dead_letter) == (0, 1, "HTTP 400: bad batch")
    store.commit([event(3)], NOW, {})
    (fourth,) = store.claim(CLOUDEVENTS, NOW + 200, 30, 10)
    store.delivered([fourth.outbox_id])
    assert store.outbox_status(NOW + 200)[CLOUDEVENTS].pending == 0
    store.close()


def test_each_budget_threshold_alerts_once_per_period(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    store.import_prices(parse(BOOK, "yaml"), "admin", NOW - 100)
    # Each event: 15 tokens; cost 10 × 1 + 5 × 2 per million = 20 micro-units.
    store.set_limits(KeyLimits("team-a", token_budget=60, budget_period="day", money_budget_micro=100), NOW)
    store.set_limits(KeyLimits("other", requests_per_minute=5), NOW)  # no budget: never alerts
    assert store.check_budgets(NOW) == []
    store.commit([event(0), event(1)], NOW, {})  # 30 tokens (50 %), 40 micro (40 %)
    alerts = store.check_budgets(NOW)
    assert [(a.budget, a.threshold, a.spent) for a in alerts] == [("tokens", 50, 30)]
    assert store.check_budgets(NOW + 1) == []  # once
    store.commit([event(2), event(3), event(4)], NOW, {})  # 75 tokens (125 %), 100 micro (100 %)
    alerts = store.check_budgets(NOW + 2)
    assert [(a.budget, a.threshold) for a in alerts] == [("tokens", 80), ("tokens", 100), ("money", 50)] + [
        ("money", 80),
        ("money", 100),
    ]
    body = json.loads(alerts[-1].body())
    assert body["currency"] == "USD" and body["spent"] == 100 and body["budget_amount"] == 100
    assert body["level"] == "key" and body["threshold_percent"] == 100
    assert store.check_budgets(NOW + 3) == []
    assert len(store.claim(ALERTS, NOW + 3, 30, 100)) == 6  # each alert's outbox row
    store.close()


def test_the_file_export_reads_a_period_in_pages(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    events = [event(i, occurred_at=NOW - 100 + i // 3) for i in range(10)]
    store.commit(events, NOW, {})
    rows = list(store.usage_rows_between(NOW - 99, NOW - 97, page=2))
    assert [r.event_id for r in rows] == ["ev-3", "ev-4", "ev-5", "ev-6", "ev-7", "ev-8"]
    assert len(list(store.usage_rows_between(NOW - 1000, NOW, page=3))) == 10
    store.close()


def test_the_pieces_of_a_delivery() -> None:
    assert [crossed(s, 100) for s in (0, 49, 50, 99, 100, 250)] == [[], [], [50], [50, 80], [50, 80, 100]] + [
        [50, 80, 100]
    ]
    assert [outcome(s) for s in (200, 204, 400, 401, 404, 408, 413, 429, 500, 503)] == [
        *(DELIVERED, DELIVERED),
        *(DEAD_LETTERED, DEAD_LETTERED, DEAD_LETTERED, RETRIED, DEAD_LETTERED, RETRIED, RETRIED, RETRIED),
    ]
    assert [backoff(n, 60) for n in (1, 2, 3, 7, 8)] == [1, 2, 4, 60, 60]
    key = webhook_signature.secret_key("whsec_c2VjcmV0")
    assert key == b"secret"
    headers = webhook_signature.headers(key, "msg_1", 1_700_000_000, b'{"a":1}')
    assert webhook_signature.verify(key, headers, b'{"a":1}')
    assert not webhook_signature.verify(key, headers, b'{"a":2}')
    assert not webhook_signature.verify(b"other", headers, b'{"a":1}')
    # The Standard Webhooks specification's own example (its test vector).
    vector = webhook_signature.signature(
        webhook_signature.secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert vector == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_cloud_event_keeps_the_usage_events_identity_and_exact_cost(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    store.import_prices(parse(BOOK, "yaml"), "admin", NOW - 100)
    store.commit([event(7, model="m2"), event(8)], NOW, {})
    rows = {r.event_id: r for r in store.usage_rows_of([("gw-1", "ev-7"), ("gw-1", "ev-8")])}
    priced, unpriced = cloud_event(rows["ev-8"]), cloud_event(rows["ev-7"])
    identity = (priced["id"], priced["source"], priced["specversion"], priced["subject"])
    assert identity == ("ev-8", "gw-1", "1.0", "team-a")
    assert priced["data"]["cost_micro"] == 20 and priced["data"]["cost"] == "0.000020"
    assert priced["data"]["currency"] == "USD" and priced["data"]["total_tokens"] == 15
    assert unpriced["data"]["cost_micro"] is None and unpriced["data"]["cost"] is None
    assert priced["time"].endswith("Z")
    store.close()
