"""vLLM's own Prometheus metrics (`vllm:*`) for every model an engine process hosts.

vLLM's Prometheus stat logger expects one engine per process: when it is made, it unregisters every
`vllm:*` collector from the default registry, so a model launched later would take the earlier models'
series away. Each model's engine is therefore made under one lock, and the collectors it registered are
moved from the default registry into `VLLM_METRICS`, which exports every hosted model's series, one
family per metric name (vLLM's `model_name` label tells the models apart), until the model stops."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

T = TypeVar("T")


def _vllm_collectors() -> list[Collector]:
    # The registry keeps no public list of its collectors; vLLM's unregister_vllm_metrics reads the same.
    return [c for c in list(REGISTRY._collector_to_names) if getattr(c, "_name", "").startswith("vllm:")]


class HostedVllmMetrics(Collector):
    def __init__(self) -> None:
        self._making = threading.Lock()
        self._by_model: dict[str, list[Collector]] = {}

    def make_engine(self, model: str, make: Callable[[], T]) -> T:
        """Runs `make` (which builds a vLLM engine for `model`, in this thread) and keeps the `vllm:*`
        collectors it registered as that model's."""
        with self._making:
            try:
                engine = make()
            finally:
                # Taken out of vLLM's registry whatever happened: a failed make's would be exposed twice.
                collectors = _vllm_collectors()
                for collector in collectors:
                    REGISTRY.unregister(collector)
            self._by_model[model] = collectors
            return engine

    def forget(self, model: str) -> None:
        self._by_model.pop(model, None)

    def describe(self) -> Iterable[Metric]:
        # Nothing to check at registration: the families come and go with the models.
        return []

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for model, collectors in list(self._by_model.items()):
            for collector in collectors:
                for family in collector.collect():
                    merged = families.get(family.name)
                    if merged is None:
                        merged = families[family.name] = Metric(
                            family.name, family.documentation, family.type, family.unit
                        )
                    # vLLM's config-info gauges carry no model label: without one, two models' samples
                    # would be the same series.
                    merged.samples.extend(
                        sample
                        if "model_name" in sample.labels
                        else sample._replace(labels={**sample.labels, "model_name": model})
                        for sample in family.samples
                    )
        yield from families.values()


VLLM_METRICS = HostedVllmMetrics()
REGISTRY.register(VLLM_METRICS)
