"""A period's figures side by side, each counted its own way, for `reconcile --from --to`: the ledger (the
stored events), the rollups that reads and reports use, the events priced again from their tokens and the
price book (the price in force when each occurred), and an export file (Parquet or CSV) read back. Any
figure that differs between them is drift, named; expected: none."""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass, fields
from decimal import Decimal
from pathlib import Path

from services.contracts.pricing import event_cost, in_force
from services.metering.export_rows import UsageRow
from services.metering.rollups import Totals


@dataclass(frozen=True)
class Figures:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_micro: int = 0
    unpriced_requests: int = 0


FIGURES = tuple(f.name for f in fields(Figures))


def _add(sums: list[int], prompt: int, cached: int, completion: int, cost: int | None) -> None:
    for i, value in enumerate((1, prompt, cached, completion, cost or 0, int(cost is None))):
        sums[i] += value


def ledger_and_priced(rows: list[UsageRow], book: dict) -> tuple[Figures, Figures]:
    """The stored events summed as recorded, and summed with each one priced again from its tokens at the
    price in force when it occurred (its registered model's, else its served model's)."""
    ledger, priced = [0] * 6, [0] * 6
    for r in rows:
        _add(ledger, r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.cost_micro)
        price = None
        for name in dict.fromkeys((r.model_name, r.model)):
            price = in_force(book.get(name, []), r.occurred_at)
            if price is not None:
                break
        cost = None
        if price is not None:
            cost = event_cost(
                r.prompt_tokens, r.cached_tokens, r.completion_tokens, price, r.images, r.embedding_inputs
            )
        _add(priced, r.prompt_tokens, r.cached_tokens, r.completion_tokens, cost)
    return Figures(*ledger), Figures(*priced)


def from_totals(totals: Totals) -> Figures:
    return Figures(
        totals.requests,
        totals.prompt_tokens,
        totals.cached_tokens,
        totals.completion_tokens,
        totals.cost_micro,
        totals.unpriced_requests,
    )


def file_figures(path: Path) -> Figures:
    """An export file's sums, read back (its decimal costs checked against its micro-units on the way)."""
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            records = [
                (int(r["x_PromptTokens"]), int(r["x_CachedTokens"]), int(r["x_CompletionTokens"]))
                + ((int(r["x_CostMicro"]) if r["x_CostMicro"] else None), Decimal(r["BilledCost"] or "0"))
                for r in csv.DictReader(f)
            ]
    else:
        import pyarrow.parquet as pq

        names = ["x_PromptTokens", "x_CachedTokens", "x_CompletionTokens", "x_CostMicro", "BilledCost"]
        table = pq.read_table(path, columns=names).to_pydict()
        records = [(*values[:4], values[4] or Decimal(0)) for values in zip(*(table[n] for n in names))]
    sums = [0] * 6
    for prompt, cached, completion, cost, billed in records:
        if Decimal(cost or 0).scaleb(-6) != billed:
            raise ValueError(f"{path}: BilledCost {billed} is not x_CostMicro {cost} micro-units")
        _add(sums, prompt, cached, completion, cost)
    return Figures(*sums)


def drift(columns: dict[str, Figures]) -> list[str]:
    """Each figure on which the columns disagree, with every column's value."""
    out = []
    for i, name in enumerate(FIGURES):
        values = {column: astuple(f)[i] for column, f in columns.items()}
        if len(set(values.values())) > 1:
            out.append(f"{name}: " + ", ".join(f"{column} {value}" for column, value in values.items()))
    return out


def render(columns: dict[str, Figures]) -> str:
    header = f"{'figure':<20}" + "".join(f"{column:>16}" for column in columns)
    lines = [header, "-" * len(header)]
    for i, name in enumerate(FIGURES):
        lines.append(f"{name:<20}" + "".join(f"{astuple(f)[i]:>16}" for f in columns.values()))
    return "\n".join(lines)
