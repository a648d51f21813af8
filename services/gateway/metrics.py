"""The gateway's Prometheus metrics (base units, `_total` counters, labels bounded to known values)."""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from services.gateway.outcome import Outcome

# Seconds; dense where CPU and GPU latencies live.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
OTHER_MODEL = "other"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.known_models: set[str] = set()
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests by endpoint, model and status code",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "gateway_prompt_tokens", "Prompt tokens, as counted by the engine", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "gateway_completion_tokens", "Completion tokens, as counted by the engine", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "gateway_cached_tokens", "Prompt tokens served from the prefix cache", ["model"], registry=r
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "From request to first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        itl = (
            "gateway_inter_token_latency_seconds",
            "Time between tokens as the gateway received them",
            LATENCY_BUCKETS,
            r,
        )
        # Several workers (services.gateway.workers) keep their metrics in prometheus_client's multiprocess
        # files, which only the library's own metric types write.
        self.itl: TokenGaps | HistogramGaps = HistogramGaps(*itl) if multiprocess() else TokenGaps(*itl)
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Whole request",
            ["endpoint", "model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.limits_polls = Counter(
            "gateway_limits_polls",
            "Reads of which keys are limited, from metering, that succeeded (a change made through another"
            " replica applies here from the next one)",
            registry=r,
        )
        self.keys_watch = Gauge(
            "gateway_issued_keys_watch_connected",
            "1 while this gateway follows metering's key changes (0: the keys it knows keep working, no new"
            " key or revocation reaches it)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Generation requests in progress", registry=r, multiprocess_mode="livesum"
        )

    def model_label(self, model: str | None) -> str:
        return model if model in self.known_models else OTHER_MODEL

    def request_done(self, endpoint: str, model: str | None, status: int) -> None:
        self.requests.labels(endpoint, self.model_label(model), str(status)).inc()

    def outcome(self, outcome: Outcome) -> None:
        model = self.model_label(outcome.model)
        self.prompt_tokens.labels(model).inc(outcome.prompt_tokens)
        self.completion_tokens.labels(model).inc(outcome.completion_tokens)
        self.cached_tokens.labels(model).inc(outcome.cached_tokens)
        if outcome.completion_tokens:
            self.ttft.labels(model).observe(outcome.time_to_first_token_seconds)
        self.duration.labels(outcome.endpoint, model).observe(outcome.duration_seconds)

    def gap_observer(self, model: str) -> Callable[[float, int], None]:
        """Observes the gaps of one request's stream. The model's counts are looked up once, at the
        first gap (after the engine accepted the model, so the label is known)."""
        counts: _GapCounts | None = None

        def observe(seconds: float, tokens: int) -> None:
            # A message carrying `tokens` tokens arrived `seconds` after the previous one.
            nonlocal counts
            if counts is None:
                counts = self.itl.counts(self.model_label(model))
            counts.add(seconds / tokens, tokens)

        return observe


def multiprocess() -> bool:
    """Whether metrics are kept in prometheus_client's multiprocess mode (the gateway's workers)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _GapCounts:
    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, seconds: float, times: int) -> None:
        self.buckets[bisect_left(self.bounds, seconds)] += times
        self.sum += seconds * times


class TokenGaps(Collector):
    """A histogram by model of the gaps between tokens, observed once per token: plain counts, bumped in
    the event loop's thread (prometheus_client's Histogram takes two locks and walks its buckets per
    observation), exposed as a histogram through a custom collector, the library's own extension point."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = list(buckets)
        self._by_model: dict[str, _GapCounts] = {}
        registry.register(self)

    def counts(self, model: str) -> _GapCounts:
        found = self._by_model.get(model)
        if found is None:
            found = self._by_model[model] = _GapCounts(self._bounds)
        return found

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=["model"])
        for model, counts in list(self._by_model.items()):
            buckets, cumulative = [], 0
            for bound, count in zip([*map(str, self._bounds), "+Inf"], list(counts.buckets)):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([model], buckets, counts.sum)
        yield family


class _HistogramCounts:
    __slots__ = ("_histogram",)

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram

    def add(self, seconds: float, times: int) -> None:
        for _ in range(times):
            self._histogram.observe(seconds)


class HistogramGaps:
    """The same histogram as TokenGaps, as prometheus_client's Histogram (multiprocess mode)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self._histogram = Histogram(name, documentation, ["model"], buckets=buckets, registry=registry)

    def counts(self, model: str) -> _HistogramCounts:
        return _HistogramCounts(self._histogram.labels(model))
