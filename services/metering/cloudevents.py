"""Usage events as CloudEvents 1.0 in a JSON batch (`application/cloudevents-batch+json`, what OpenMeter
ingests). Each event keeps its identity: the CloudEvent's source and id are the usage event's, so a
receiver that deduplicates on (source, id) counts an event sent twice once. Costs stay exact: integer
micro-units (`cost_micro`), and the same amount as a decimal string (`cost`)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson

from services.metering.export_rows import UsageRow

CONTENT_TYPE = "application/cloudevents-batch+json"
EVENT_TYPE = "llmserve.usage"


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def decimal_cost(cost_micro: int | None) -> str | None:
    return None if cost_micro is None else str(Decimal(cost_micro).scaleb(-6))


def cloud_event(row: UsageRow) -> dict:
    return {
        "specversion": "1.0",
        "id": row.event_id,
        "source": row.source,
        "type": EVENT_TYPE,
        "time": rfc3339(row.occurred_at),
        # Whom the usage is billed to: the API key, or the internal caller that sent it without one.
        "subject": row.api_key_id or row.caller or "anonymous",
        "datacontenttype": "application/json",
        "data": {
            "model": row.model_name,
            "served_model": row.model,
            "endpoint": row.endpoint,
            "status": row.status,
            "finish_reason": row.finish_reason,
            "streamed": row.streamed,
            "prompt_tokens": row.prompt_tokens,
            "cached_tokens": row.cached_tokens,
            "completion_tokens": row.completion_tokens,
            "total_tokens": row.prompt_tokens + row.completion_tokens,
            "images": row.images,
            "embedding_inputs": row.embedding_inputs,
            "cost_micro": row.cost_micro,
            "cost": decimal_cost(row.cost_micro),
            "currency": row.currency,
            "price_id": row.price_id,
            "api_key_id": row.api_key_id,
            "team_id": row.team_id,
            "org_id": row.org_id,
            "caller": row.caller,
            "trace_id": row.trace_id,
        },
    }


def batch(rows: list[UsageRow]) -> bytes:
    return orjson.dumps([cloud_event(r) for r in rows])
