"""Usage as files a billing system or a notebook reads directly: one row per usage event, in Parquet or
CSV, with columns named after the FinOps FOCUS specification (1.2) where one fits and `x_`-prefixed ones
for the rest. Money stays exact: costs are DECIMAL(24, 6) in Parquet and decimal strings in CSV (never
floats), with the integer micro-units beside them (x_CostMicro). An event no price covered has no cost
(null) and x_Unpriced true: never a silent 0. pyarrow writes Parquet (the format's reference library),
in row groups, so a month of events never sits in memory at once."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from itertools import islice
from pathlib import Path

from services.metering.cloudevents import decimal_cost
from services.metering.export_rows import UsageRow

PROVIDER = "llmserve"
_ROW_GROUP = 50_000

# (name, Parquet type) in file order; "cost" columns are exact decimals.
COLUMNS = (
    ("BilledCost", "cost"),
    ("EffectiveCost", "cost"),
    ("ListCost", "cost"),
    ("ContractedCost", "cost"),
    ("BillingCurrency", "string"),
    ("BillingAccountId", "string"),
    ("SubAccountId", "string"),
    ("BillingPeriodStart", "time"),
    ("BillingPeriodEnd", "time"),
    ("ChargePeriodStart", "time"),
    ("ChargePeriodEnd", "time"),
    ("ChargeCategory", "string"),
    ("ChargeFrequency", "string"),
    ("ChargeDescription", "string"),
    ("ConsumedQuantity", "int"),
    ("ConsumedUnit", "string"),
    ("PricingQuantity", "int"),
    ("PricingUnit", "string"),
    ("ProviderName", "string"),
    ("PublisherName", "string"),
    ("InvoiceIssuerName", "string"),
    ("ServiceName", "string"),
    ("ServiceCategory", "string"),
    ("ResourceId", "string"),
    ("ResourceName", "string"),
    ("ResourceType", "string"),
    ("SkuId", "string"),
    ("SkuPriceId", "string"),
    ("Tags", "string"),
    ("x_EventSource", "string"),
    ("x_EventId", "string"),
    ("x_ApiKeyId", "string"),
    ("x_TeamId", "string"),
    ("x_OrgId", "string"),
    ("x_Caller", "string"),
    ("x_Endpoint", "string"),
    ("x_Status", "string"),
    ("x_PromptTokens", "int"),
    ("x_CachedTokens", "int"),
    ("x_CompletionTokens", "int"),
    ("x_Images", "int"),
    ("x_EmbeddingInputs", "int"),
    ("x_CostMicro", "int"),
    ("x_Unpriced", "bool"),
    ("x_TraceId", "string"),
)
NAMES = tuple(name for name, _ in COLUMNS)


def _month(t: float) -> tuple[datetime, datetime]:
    moment = datetime.fromtimestamp(t, UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def focus_row(row: UsageRow) -> tuple:
    """The row's values in COLUMNS order (costs as Decimal, times as aware datetimes)."""
    cost = None if row.cost_micro is None else Decimal(row.cost_micro).scaleb(-6)
    at = datetime.fromtimestamp(row.occurred_at, UTC)
    month_start, month_end = _month(row.occurred_at)
    tokens = row.prompt_tokens + row.completion_tokens
    tags = json.dumps({"api_key_id": row.api_key_id, "caller": row.caller, "model": row.model}, sort_keys=True)
    return (
        *(cost, cost, cost, cost),
        row.currency,
        row.org_id,
        row.team_id,
        *(month_start, month_end, at, at),
        "Usage",
        "Usage-Based",
        f"{row.model_name} {row.endpoint} ({row.status})",
        tokens,
        "Tokens",
        tokens,
        "Tokens",
        *(PROVIDER, PROVIDER, PROVIDER, PROVIDER),
        "AI and Machine Learning",
        row.model_name,
        row.model_name,
        "Model",
        row.model_name,
        row.price_id,
        tags,
        row.source,
        row.event_id,
        row.api_key_id,
        row.team_id,
        row.org_id,
        row.caller,
        row.endpoint,
        row.status,
        row.prompt_tokens,
        row.cached_tokens,
        row.completion_tokens,
        row.images,
        row.embedding_inputs,
        row.cost_micro,
        row.cost_micro is None,
        row.trace_id,
    )


def _chunks(rows: Iterable[UsageRow], size: int) -> Iterator[list[UsageRow]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def write_parquet(rows: Iterable[UsageRow], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "cost": pa.decimal128(24, 6),
        "string": pa.string(),
        "time": pa.timestamp("us", tz="UTC"),
        "int": pa.int64(),
        "bool": pa.bool_(),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in COLUMNS])
    written = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in _chunks(rows, _ROW_GROUP):
            columns = list(zip(*(focus_row(r) for r in chunk)))
            writer.write_table(pa.table([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema))
            written += len(chunk)
    return written


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_csv(rows: Iterable[UsageRow], path: Path) -> int:
    written = 0
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(NAMES)
        for row in rows:
            values = focus_row(row)
            cost = decimal_cost(row.cost_micro)
            writer.writerow([cost or "", cost or "", cost or "", cost or "", *map(_text, values[4:])])
            written += 1
    return written
