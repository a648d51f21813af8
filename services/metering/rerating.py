"""Re-rating: a period's events priced again against a corrected price book (a price file), the
difference per key reported, and, when applied, kept beside the original figures: the events, rollups
and counters are never changed (they are what was recorded at the time); each changed event's original
and re-rated cost go in cost_adjustments under the re-rating's id (migration 0008)."""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections import defaultdict
from dataclasses import dataclass, field

from services.contracts.pricing import Price, event_cost, in_force
from services.metering.price_file import PriceRow
from services.metering.store_primitives import StorePrimitives

_BATCH = 5000
_EVENT = (
    "source, event_id, api_key_id, model, model_name, occurred_at, prompt_tokens, cached_tokens, completion_tokens,"
    " cost_micro, price_id, images, embedding_inputs"
)


@dataclass
class KeyDifference:
    events: int = 0
    original_micro: int = 0
    rerated_micro: int = 0
    unpriced_before: int = 0
    unpriced_after: int = 0

    @property
    def difference_micro(self) -> int:
        return self.rerated_micro - self.original_micro


@dataclass
class Rerating:
    rerating_id: str
    start: float
    end: float
    by_key: dict[str, KeyDifference] = field(default_factory=dict)
    changed: list[tuple] = field(default_factory=list)


def corrected_book(rows: list[PriceRow]) -> dict[str, list[Price]]:
    """A corrected book's prices by model, each from its effective time (none given: from the beginning)."""
    book: dict[str, list[Price]] = defaultdict(list)
    for n, row in enumerate(rows):
        book[row.model_name].append(
            Price(
                f"corrected_{n}",
                row.model_name,
                row.currency,
                row.effective_from or 0.0,
                row.prompt,
                row.cached_prompt,
                row.completion,
                image=row.image,
                embedding_input=row.embedding_input,
            )
        )
    for prices in book.values():
        prices.sort(key=lambda p: p.effective_from)
    return dict(book)


class Reratings(StorePrimitives):
    def rerate(
        self, rows: list[PriceRow], start: float, end: float, actor: str = "", now: float = 0.0, apply: bool = False
    ) -> Rerating:
        """The events that occurred in [start, end) priced against the corrected book, per key; with apply,
        the re-rating and each changed event's original and re-rated cost are stored (one transaction)."""
        book = corrected_book(rows)
        result = Rerating("rerating_" + secrets.token_hex(8), start, end)
        by_key: dict[str, KeyDifference] = defaultdict(KeyDifference)
        # Pages in occurred_at order (its index); the events of a page's last instant are all read with it.
        after, inclusive = start, True
        while True:
            page = self._rows(
                f"SELECT {_EVENT} FROM events WHERE occurred_at {'>=' if inclusive else '>'} ? AND occurred_at < ?"
                " ORDER BY occurred_at LIMIT ?",
                (after, end, _BATCH),
            )
            full = len(page) == _BATCH
            if full:
                last = page[-1][5]
                page = [row for row in page if row[5] < last]
                page += self._rows(f"SELECT {_EVENT} FROM events WHERE occurred_at = ?", (last,))
            for row in page:
                self._rerate_one(row, book, by_key, result)
            if not full:
                break
            after, inclusive = last, False
        result.by_key = dict(by_key)
        if apply:
            with self._transaction():
                described = [dataclasses.asdict(p) for prices in book.values() for p in prices]
                self._rows(
                    "INSERT INTO reratings (rerating_id, period_start, period_end, actor, at, book)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (result.rerating_id, start, end, actor, now, json.dumps(described, sort_keys=True)),
                )
                self._many(
                    "INSERT INTO cost_adjustments (rerating_id, source, event_id, api_key_id, occurred_at,"
                    " original_cost_micro, original_price_id, rerated_cost_micro) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(result.rerating_id, *row) for row in result.changed],
                )
        return result

    @staticmethod
    def _rerate_one(row: tuple, book: dict[str, list[Price]], by_key: dict, result: Rerating) -> None:
        source, event_id, key, model, name, occurred, prompt, cached, completion, cost, price_id, images, inputs = row
        price = None
        for candidate in dict.fromkeys(n for n in (name, model) if n):
            price = in_force(book.get(candidate, []), occurred)
            if price is not None:
                break
        rerated = None if price is None else event_cost(prompt, cached, completion, price, images, inputs)
        cell = by_key[key]
        cell.events += 1
        cell.original_micro += cost or 0
        cell.rerated_micro += rerated or 0
        cell.unpriced_before += cost is None
        cell.unpriced_after += rerated is None
        if rerated != cost:
            result.changed.append((source, event_id, key, occurred, cost, price_id, rerated))
