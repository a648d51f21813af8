"""The shared workload: seeded random token-id prompts of a fixed length, and summary statistics."""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Workload:
    input_len: int = 64
    output_len: int = 64
    seed: int = 0


def prompts(workload: Workload, count: int, vocab_size: int) -> list[list[int]]:
    # Skip the low ids, where special tokens live.
    rng = random.Random(workload.seed)
    return [[rng.randrange(100, vocab_size) for _ in range(workload.input_len)] for _ in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass(frozen=True)
class RunResult:
    name: str
    concurrency: int
    requests: int
    output_tokens: int
    seconds: float
    ttft_median: float
    ttft_p99: float

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds

    def as_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "output_tokens_per_second": self.output_tokens_per_second}


def summarize(name: str, concurrency: int, output_tokens: int, seconds: float, ttfts: list[float]) -> RunResult:
    return RunResult(
        name=name,
        concurrency=concurrency,
        requests=len(ttfts),
        output_tokens=output_tokens,
        seconds=seconds,
        ttft_median=statistics.median(ttfts) if ttfts else float("nan"),
        ttft_p99=percentile(ttfts, 99),
    )
