"""The inter-token histogram, kept as plain counts, exposes what prometheus_client's Histogram would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from services.gateway.metrics import LATENCY_BUCKETS, GatewayMetrics


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("gateway_inter_token_latency_seconds") and "_created" not in line:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_token_gaps_expose_the_same_histogram_as_prometheus_client() -> None:
    metrics = GatewayMetrics()
    metrics.known_models.add("m")
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "gateway_inter_token_latency_seconds",
        "Time between tokens as the gateway received them",
        ["model"],
        buckets=LATENCY_BUCKETS,
        registry=reference_registry,
    )
    shuffled = random.Random(7)
    for model in ("m", "unknown"):
        observe = metrics.gap_observer(model)
        for _ in range(500):
            # Gaps on and around bucket bounds, beyond the last, and messages carrying several tokens.
            gap = shuffled.choice([0.0, 0.001, 0.005, 0.0050001, 0.2, 59.9, 61.0, 1000.0])
            tokens = shuffled.choice([1, 1, 2, 5])
            observe(gap * tokens, tokens)
            for _ in range(tokens):
                reference.labels(metrics.model_label(model)).observe(gap * tokens / tokens)
    ours, theirs = _samples(metrics.registry), _samples(reference_registry)
    assert ours.keys() == theirs.keys() and len(ours) == 2 * (len(LATENCY_BUCKETS) + 3)
    assert all(abs(ours[k] - theirs[k]) < 1e-6 for k in ours)
