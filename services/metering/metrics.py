"""The metering service's Prometheus metrics: labelled by model only (per-key usage is in the query API).
The model label takes at most `max_models` values, the first seen; events of any model beyond them
count under `other` (the store and the query API keep every name), so no sender can grow the series
without bound."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.metering.events import UsageEvent
from services.metering.store import ModelTotals

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


OTHER_MODEL = "other"


class MeteringMetrics:
    def __init__(self, max_models: int = 100) -> None:
        self._max_models = max_models
        self._models: set[str] = set()
        self.registry = r = CollectorRegistry()
        self.prompt_tokens = Counter("metering_prompt_tokens", "Prompt tokens recorded", ["model"], registry=r)
        self.completion_tokens = Counter(
            "metering_completion_tokens", "Completion tokens recorded", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "metering_cached_tokens", "Prompt tokens served from the prefix cache", ["model"], registry=r
        )
        self.generation_seconds = Counter(
            "metering_generation_seconds",
            "Seconds spent generating (first to last token); rate(completion)/rate(this) is throughput",
            ["model"],
            registry=r,
        )
        self.requests = Counter(
            "metering_requests", "Requests recorded, by final status", ["model", "status"], registry=r
        )
        self.ingested = Counter("metering_events_ingested", "Events recorded for the first time", ["model"], registry=r)
        self.duplicated = Counter(
            "metering_events_duplicated", "Events received again and not counted", ["model"], registry=r
        )
        self.rejected = Counter("metering_events_rejected", "Events refused, by reason", ["reason"], registry=r)
        self.auth_failures = Counter(
            "metering_auth_failures", "gRPC calls refused for their credential", ["method", "reason"], registry=r
        )
        self.ttft = Histogram(
            "metering_time_to_first_token_seconds",
            "Time to first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "metering_time_per_output_token_seconds",
            "Generation seconds per output token after the first",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "metering_request_duration_seconds", "Whole request", ["model"], buckets=DURATION_BUCKETS, registry=r
        )
        self.stored_tokens = Gauge(
            "metering_stored_tokens",
            "Tokens in the store, from every replica since the store began (the same on each replica: take max)",
            ["model", "type"],
            registry=r,
        )
        self.stored_requests = Gauge(
            "metering_stored_requests",
            "Requests in the store, from every replica (take max across replicas)",
            ["model"],
            registry=r,
        )
        self.stored_cost = Gauge(
            "metering_stored_cost_micro",
            "Cost of the priced requests in the store, in micro-units of the price book's currency (take max)",
            ["model"],
            registry=r,
        )
        self.stored_unpriced = Gauge(
            "metering_stored_unpriced_requests", "Requests no price covered, in the store", ["model"], registry=r
        )
        self.throughput = Gauge(
            "metering_output_tokens_per_second",
            "Output tokens per second over a sliding window",
            ["model", "window"],
            registry=r,
        )
        # The outbox (CloudEvents push, budget alerts): read from the store, the same on every replica.
        self.outbox_pending = Gauge(
            "metering_outbox_pending", "Outbox rows waiting (take max across replicas)", ["kind"], registry=r
        )
        self.outbox_oldest = Gauge(
            "metering_outbox_oldest_seconds", "Age of the oldest outbox row waiting", ["kind"], registry=r
        )
        self.dead_letters = Gauge(
            "metering_dead_letters", "Outbox rows the receiver refused (4xx), kept with why", ["kind"], registry=r
        )
        self.deliveries = Counter(
            "metering_deliveries", "POSTs of the outbox by this replica, by outcome", ["kind", "outcome"], registry=r
        )
        self.exported_events = Counter(
            "metering_exported_events", "Usage events in CloudEvents batches the receiver took", registry=r
        )

    def model_label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) < self._max_models and model != OTHER_MODEL:
            self._models.add(model)
            return model
        return OTHER_MODEL

    def reload(self, totals: dict[str, ModelTotals], rejections: dict[str, int]) -> None:
        """Counters continue from the store's totals after a restart."""
        for name, m in totals.items():
            model = self.model_label(name)
            t = m.totals
            self.prompt_tokens.labels(model).inc(t.prompt_tokens)
            self.completion_tokens.labels(model).inc(t.completion_tokens)
            self.cached_tokens.labels(model).inc(t.cached_tokens)
            self.generation_seconds.labels(model).inc(t.generation_seconds)
            self.requests.labels(model, "ok").inc(t.ok_requests)
            self.requests.labels(model, "abort").inc(t.aborted_requests)
            self.requests.labels(model, "error").inc(t.failed_requests)
            self.ingested.labels(model).inc(t.requests)
            self.duplicated.labels(model).inc(m.duplicated)
        for kind, count in rejections.items():
            self.rejected.labels(kind).inc(count)

    def stored(self, totals: dict[str, ModelTotals]) -> None:
        by_label: dict[str, list[int]] = {}
        for name, m in totals.items():
            sums = by_label.setdefault(self.model_label(name), [0] * 6)
            t = m.totals
            for i, value in enumerate(
                (t.prompt_tokens, t.completion_tokens, t.cached_tokens, t.requests, t.cost_micro, t.unpriced_requests)
            ):
                sums[i] += value
        for model, (prompt, completion, cached, requests, cost, unpriced) in by_label.items():
            self.stored_cost.labels(model).set(cost)
            self.stored_unpriced.labels(model).set(unpriced)
            self.stored_tokens.labels(model, "prompt").set(prompt)
            self.stored_tokens.labels(model, "completion").set(completion)
            self.stored_tokens.labels(model, "cached").set(cached)
            self.stored_requests.labels(model).set(requests)

    def recorded(self, events: list[UsageEvent]) -> None:
        """One commit's new events. Counters move once per model (a labelled lookup and increment costs
        microseconds, and a batch of 1000 would pay it nine times per event); histograms observe each event."""
        by_model: dict[str, list[UsageEvent]] = {}
        for event in events:
            by_model.setdefault(self.model_label(event.model), []).append(event)
        for model, group in by_model.items():
            self.prompt_tokens.labels(model).inc(sum(e.prompt_tokens for e in group))
            self.completion_tokens.labels(model).inc(sum(e.completion_tokens for e in group))
            self.cached_tokens.labels(model).inc(sum(e.cached_tokens for e in group))
            self.generation_seconds.labels(model).inc(sum(e.generation_seconds for e in group))
            for status in ("ok", "abort", "error"):
                count = sum(1 for e in group if e.status == status)
                if count:
                    self.requests.labels(model, status).inc(count)
            self.ingested.labels(model).inc(len(group))
            ttft, tpot, duration = self.ttft.labels(model), self.tpot.labels(model), self.duration.labels(model)
            for event in group:
                if event.completion_tokens:
                    ttft.observe(event.time_to_first_token_seconds)
                if event.completion_tokens > 1:
                    tpot.observe(event.generation_seconds / (event.completion_tokens - 1))
                duration.observe(event.request_seconds)
