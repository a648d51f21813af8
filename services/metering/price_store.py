"""The price book in the usage database (migration 0007): prices imported whole or not at all, never
changing one already in force, and each event priced at record time from the price in force at its
occurred_at (services.metering.pricing)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from services.contracts.pricing import Price, event_cost, in_force, show
from services.metering.events import UsageEvent
from services.metering.price_file import InvalidPrices, PriceRow
from services.metering.pricing import new_price_id
from services.metering.store_primitives import StorePrimitives

# (cost in micro-units, price id) of the priced events of a commit, by (source, event id).
Costs = dict[tuple[str, str], tuple[int, str]]
_COLUMNS = (
    "price_id, model_name, currency, effective_from, prompt, cached_prompt, completion, created_at, image,"
    " embedding_input"
)


class PriceStore(StorePrimitives):
    def import_prices(self, rows: list[PriceRow], actor: str, now: float) -> list[Price]:
        """Adds the prices, all or none (InvalidPrices listing every problem): each starts now or later,
        after the latest price of its model, in the book's one currency."""
        with self._transaction():
            version = self._next_version()
            currency = self.currency()
            latest = dict(self._rows("SELECT model_name, MAX(effective_from) FROM prices GROUP BY model_name"))
            problems = []
            prices = []
            for row in rows:
                start = now if row.effective_from is None else row.effective_from
                if currency and row.currency != currency:
                    problems.append(f"{row.model_name}: currency: the price book is in {currency}, not {row.currency}")
                if start < now:
                    problems.append(
                        f"{row.model_name}: effective_from: in the past; a price in force is never changed"
                        " (add one that starts later, or re-rate a period)"
                    )
                elif row.model_name in latest and start <= latest[row.model_name]:
                    problems.append(
                        f"{row.model_name}: effective_from: must be after its latest price, which starts at"
                        f" {latest[row.model_name]:.0f}"
                    )
                prices.append(
                    Price(
                        new_price_id(),
                        row.model_name,
                        row.currency,
                        start,
                        row.prompt,
                        row.cached_prompt,
                        row.completion,
                        now,
                        row.image,
                        row.embedding_input,
                    )
                )
            if problems:
                raise InvalidPrices(problems)
            for price in prices:
                self._rows(
                    f"INSERT INTO prices ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", dataclasses.astuple(price)
                )
            detail = {
                p.price_id: f"{p.model_name} from {p.effective_from:.0f}: prompt {show(p.prompt, p.currency)},"
                f" cached {show(p.cached_prompt, p.currency)}, completion {show(p.completion, p.currency)} per 1M;"
                f" {show(p.image, p.currency)} per image, {show(p.embedding_input, p.currency)} per embedding input"
                for p in prices
            }
            self._audit(now, version, actor, "import_prices", "prices", detail)
        return prices

    def currency(self) -> str:
        """The price book's currency ('' while it is empty)."""
        rows = self._rows("SELECT currency FROM prices LIMIT 1")
        return rows[0][0] if rows else ""

    def list_prices(self, model_name: str = "") -> list[Price]:
        where, params = (" WHERE model_name = ?", (model_name,)) if model_name else ("", ())
        rows = self._rows(f"SELECT {_COLUMNS} FROM prices{where} ORDER BY model_name, effective_from", params)
        return [Price(*row) for row in rows]

    def price_book(self) -> dict[str, list[Price]]:
        """Every price by model, each model's sorted by start."""
        book: dict[str, list[Price]] = defaultdict(list)
        for row in self._rows(f"SELECT {_COLUMNS} FROM prices ORDER BY model_name, effective_from"):
            book[row[1]].append(Price(*row))
        return dict(book)

    def _book(self) -> dict[str, list[Price]]:
        """The price book, read once per change number (the commit path asks it for every batch)."""
        cached = self._cached("book")
        return self._cache("book", self.price_book()) if cached is None else cached

    def _priced(self, events: list[UsageEvent]) -> Costs:
        """Inside a commit: each priced event's (cost, price id) by (source, event id), at the price in force
        at its occurred_at (its registered model's price, else its served model's); an event no price
        covers is left out (unpriced). The events themselves are not copied (a copy per event cost a
        quarter of ingest)."""
        book = self._book()
        if not events or not book:
            return {}
        costs: Costs = {}
        # Most events of a commit fall under their model's latest price: that is looked up once per model.
        latest = {name: prices[-1] for name, prices in book.items()}
        for e in events:
            price = None
            for name in (e.model_name, e.model) if e.model_name and e.model_name != e.model else (e.model,):
                price = latest.get(name)
                if price is not None and e.occurred_at < price.effective_from:
                    price = in_force(book[name], e.occurred_at)
                if price is not None:
                    break
            if price is not None:
                cost = event_cost(
                    e.prompt_tokens, e.cached_tokens, e.completion_tokens, price, e.images, e.embedding_inputs
                )
                costs[e.source, e.event_id] = (cost, price.price_id)
        return costs
