"""The price book and priced events, on both stores: prices imported whole or refused with every problem
listed, never changed once in force, and every event priced to the micro-unit at the price in force at its
occurred_at, with a price change in the middle of a run; an event no price covers is unpriced, not free."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.contracts.pricing import Price, event_cost, show
from services.metering.conftest import NOW, event
from services.metering.limits import KeyLimits
from services.metering.price_file import InvalidPrices, parse
from services.metering.pricing import micro_amount
from services.metering.store import Query, UsageStore

BOOK = """
currency: USD
prices:
  - {model: m1, prompt: "0.15", cached_prompt: "0.075", completion: "0.60"}
  - {model: m2, prompt: "3", completion: "15"}
"""


def test_amounts_are_exact_and_an_event_is_rounded_once() -> None:
    assert micro_amount("0.15", "prompt") == 150_000 and micro_amount(2, "prompt") == 2_000_000
    price = Price("p", "m", "USD", 0, prompt=150_000, cached_prompt=75_000, completion=600_000)
    # 7 uncached × 0.15 + 3 cached × 0.075 + 11 completion × 0.60 per million: 7.875 micro-units -> 8.
    assert event_cost(10, 3, 11, price) == 8
    assert event_cost(1, 0, 0, Price("p", "m", "USD", 0, 500_000, 0, 0)) == 1  # exactly half: up
    assert show(1_234_567, "USD") == "1.234567 USD"
    for bad in ("-1", "0.0000001", "abc", 0.15, "1e400"):
        with pytest.raises(ValueError, match="prompt"):
            micro_amount(bad, "prompt")


@given(
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
)
def test_an_events_cost_is_the_exact_product_rounded_half_up(
    prompt: int, cached: int, completion: int, p: int, c: int, o: int
) -> None:
    cached = min(cached, prompt)
    cost = event_cost(prompt, cached, completion, Price("x", "m", "USD", 0, p, c, o))
    exact_millionths = (prompt - cached) * p + cached * c + completion * o
    assert cost * 1_000_000 - 500_000 <= exact_millionths < cost * 1_000_000 + 500_000


def test_a_bad_price_file_is_refused_whole_with_every_problem() -> None:
    text = """
prices:
  - {model: m1, currency: USD, prompt: "-1", completion: "0.1"}
  - {model: m1, currency: USD, prompt: "0.0000001", completion: "0.1"}
  - {model: m2, currency: EUR, prompt: "1", completion: "2", colour: blue}
  - {model: m3, currency: XYZ, prompt: "1", completion: "2"}
  - {model: m4, currency: USD, prompt: "1", completion: "2", effective_from: 2030-01-01T00:00:00Z}
  - {model: m4, currency: USD, prompt: "1", completion: "3", effective_from: 2030-01-01T00:00:00Z}
  - {model: m5, currency: EUR, prompt: "1", completion: "2"}
"""
    with pytest.raises(InvalidPrices) as refused:
        parse(text, "yaml")
    problems = " | ".join(refused.value.problems)
    for expected in (
        "row 1: prompt: must be a non-negative amount",
        "row 2: prompt: '0.0000001' is finer than a micro-unit",
        "row 3: unknown fields ['colour']",
        "row 4: currency: XYZ",
        "one price book has one currency",
        "m4: two prices start at the same time",
    ):
        assert expected in problems, problems
    rows = parse("model,currency,prompt,cached_prompt,completion\nm1,USD,0.15,,0.60\n", "csv")
    assert (rows[0].prompt, rows[0].cached_prompt, rows[0].completion) == (150_000, 150_000, 600_000)


def test_a_price_in_force_is_never_changed(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    store.import_prices(parse(BOOK, "yaml"), "admin", NOW)
    for text, problem in (
        ("- {model: m1, currency: USD, prompt: 1, completion: 1, effective_from: 1000}", "in the past"),
        ("- {model: m1, currency: USD, prompt: 1, completion: 1}", "after its latest price"),
        ("- {model: m3, currency: EUR, prompt: 1, completion: 1}", "the price book is in USD"),
    ):
        with pytest.raises(InvalidPrices, match=problem):
            store.import_prices(parse(text, "yaml"), "admin", NOW)
    assert len(store.list_prices()) == 2 and store.currency() == "USD"
    assert store.audit()[0][3] == "import_prices"
    store.close()


def test_events_are_priced_at_the_price_in_force_when_they_occurred(open_store: Callable[[], UsageStore]) -> None:
    """A price change in the middle of a run: each event at its own price, to the micro-unit; the totals,
    rollups and counters sum exactly those costs; an unpriced model's events are counted apart."""
    store = open_store()
    store.import_prices(parse(BOOK, "yaml"), "admin", NOW - 1000)
    change = NOW - 500
    later = f"- {{model: m1, currency: USD, prompt: '0.2', completion: '0.8', effective_from: {change:.0f}}}"
    store.import_prices(parse(later, "yaml"), "admin", NOW - 900)
    old, new = (store.list_prices("m1")[i] for i in (0, 1))
    events = [
        event(1, occurred_at=change - 1, prompt_tokens=1234, cached_tokens=1000, completion_tokens=77),
        event(2, occurred_at=change, prompt_tokens=1234, cached_tokens=1000, completion_tokens=77),
        event(3, occurred_at=change + 100, model="launch-1", model_name="m2", prompt_tokens=50, completion_tokens=9),
        event(4, occurred_at=change + 100, model="unpriced-model", prompt_tokens=50, completion_tokens=9),
        event(5, occurred_at=NOW - 1100, prompt_tokens=5, completion_tokens=5),  # before any price of m1
    ]
    store.commit(events, NOW, {})
    store.commit([event(1, occurred_at=change - 1)], NOW, {})  # a duplicate is not priced twice
    m2 = store.list_prices("m2")[0]
    want = {
        "ev-1": (event_cost(1234, 1000, 77, old), old.price_id),
        "ev-2": (event_cost(1234, 1000, 77, new), new.price_id),
        "ev-3": (event_cost(50, 0, 9, m2), m2.price_id),
        "ev-4": (None, ""),
        "ev-5": (None, ""),
    }
    assert dict((r[0], (r[1], r[2])) for r in store._rows("SELECT event_id, cost_micro, price_id FROM events")) == want
    [(_, totals)] = store.totals(Query(), ())
    assert totals.cost_micro == sum(c for c, _ in want.values() if c is not None)
    assert totals.unpriced_requests == 2
    assert store.reconcile(NOW) == []
    store.close()


def test_a_rerating_reproduces_a_corrected_month(open_store: Callable[[], UsageStore]) -> None:
    """A month priced with a wrong completion price, re-rated against the corrected book: per key, the
    re-rated sum is what the corrected book gives each event; applied, the originals stay as recorded."""
    store = open_store()
    wrong = parse("- {model: m1, currency: USD, prompt: '0.15', completion: '6.0'}", "yaml")
    store.import_prices(wrong, "admin", NOW - 10**6)
    events = [
        event(i, api_key_id=f"k{i % 3}", occurred_at=NOW - 1000 * i, prompt_tokens=100 + i, completion_tokens=7 * i)
        for i in range(1, 40)
    ]
    events.append(event(99, model="nobody-priced", occurred_at=NOW - 50))
    store.commit(events, NOW, {})
    corrected = parse("- {model: m1, currency: USD, prompt: '0.15', completion: '0.6'}", "yaml")
    fixed = Price("c", "m1", "USD", 0, 150_000, 150_000, 600_000)
    start, end = NOW - 20_000.5, NOW
    result = store.rerate(corrected, start, end, "admin", NOW, apply=True)
    inside = [e for e in events if start <= e.occurred_at < end]
    for key in ("k0", "k1", "k2"):
        mine = [e for e in inside if e.api_key_id == key and e.model == "m1"]
        want = sum(event_cost(e.prompt_tokens, e.cached_tokens, e.completion_tokens, fixed) for e in mine)
        assert result.by_key[key].rerated_micro == want and result.by_key[key].events == len(mine)
        assert result.by_key[key].difference_micro < 0
    assert result.by_key["team-a"].unpriced_before == result.by_key["team-a"].unpriced_after == 1
    stored = store._rows("SELECT COUNT(*), SUM(rerated_cost_micro) FROM cost_adjustments")[0]
    assert stored[0] == len([e for e in inside if e.model == "m1"])
    # The recorded figures stay: the rollups still equal the events as recorded.
    assert store.reconcile(NOW) == []
    store.close()


def test_a_money_budget_holds_reservations_and_counts_recorded_costs(open_store: Callable[[], UsageStore]) -> None:
    store = open_store()
    store.import_prices(parse(BOOK, "yaml"), "admin", NOW - 100)
    org = store.create_organization("acme", "UTC", {}, "admin", NOW)
    key, _ = store.create_key("k", None, [], {}, "admin", NOW, org_id=org.org_id)
    store.set_limits(KeyLimits(org.org_id, money_budget_micro=1000, budget_period="month"), NOW)
    assert store.reserve("gw", "r1", key.key_id, 100, 30, NOW, cost_micro=700)[0].granted
    decision, standings = store.reserve("gw", "r2", key.key_id, 100, 30, NOW, cost_micro=400)
    assert not decision.granted and f"The organization {org.org_id}'s money budget (month)" in decision.reason
    assert (standings[1].spent.money_used, standings[1].remaining_money) == (700, 300)
    store.settle("gw", "r1", 90, cost_micro=250)  # it cost less than it held
    assert store.reserve("gw", "r2", key.key_id, 100, 30, NOW, cost_micro=400)[0].granted
    # Their events replace the reservations at their recorded cost.
    e1 = event(1, event_id="r1", source="gw", api_key_id=key.key_id, prompt_tokens=10_000, completion_tokens=100)
    store.commit([e1], NOW, {})
    recorded = store._rows("SELECT cost_micro FROM events WHERE event_id = 'r1'")[0][0]
    assert store.standing(org.org_id, NOW)[0].spent.money_used == recorded + 400
    assert store.reconcile(NOW) == []
    store.close()


def test_images_and_embedding_inputs_are_priced_per_unit(open_store: Callable[[], UsageStore]) -> None:
    """A vision request's images and an embeddings request's inputs, at the model's price per unit, on top
    of its tokens (whole micro-units, so nothing more is rounded); a bad unit price is refused with the rest."""
    store = open_store()
    row = "{model: m1, prompt: '0.15', completion: '0.6', image: '0.0012', embedding_input: '0.00001'}"
    book = f"currency: USD\nprices:\n  - {row}\n"
    (price,) = store.import_prices(parse(book, "yaml"), "admin", NOW - 100)
    assert (price.image, price.embedding_input) == (1200, 10)
    store.commit(
        [event(1, images=3), event(2, endpoint="/v1/embeddings", completion_tokens=0, embedding_inputs=4)], NOW, {}
    )
    costs = dict(store._rows("SELECT event_id, cost_micro FROM events"))
    assert costs == {"ev-1": event_cost(10, 2, 5, price) + 3 * 1200, "ev-2": event_cost(10, 2, 0, price) + 4 * 10}
    assert event_cost(10, 2, 5, price, images=3) == costs["ev-1"]
    rows = {r.event_id: r for r in store.usage_rows_between(NOW - 1000, NOW)}
    assert (rows["ev-1"].images, rows["ev-2"].embedding_inputs) == (3, 4)
    assert store.reconcile(NOW) == []
    with pytest.raises(InvalidPrices, match="image") as refused:
        parse("- {model: m3, currency: USD, prompt: '1', completion: '1', image: '-0.5', embedding_input: 'x'}", "yaml")
    assert "embedding_input" in str(refused.value)
    store.close()
