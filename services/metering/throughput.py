"""Output tokens per second per model over sliding windows. Each event's tokens are spread evenly
over its generation interval, so a window holds only the share generated inside it (never a sum of
per-request rates)."""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

WINDOWS = (10.0, 60.0)


@dataclass(frozen=True, slots=True)
class _Span:
    start: float
    end: float
    tokens: int


class SlidingThroughput:
    def __init__(self, horizon: float = max(WINDOWS)) -> None:
        self._horizon = horizon
        self._spans: dict[str, deque[_Span]] = defaultdict(deque)

    def add(self, model: str, finished_at: float, generation_seconds: float, tokens: int) -> None:
        if tokens > 0:
            self._spans[model].append(_Span(finished_at - generation_seconds, finished_at, tokens))

    def _forget(self, now: float) -> None:
        for spans in self._spans.values():
            # Events arrive roughly in finish order; a late one just stays until it is at the front.
            while spans and spans[0].end < now - self._horizon:
                spans.popleft()

    def rate(self, model: str, window: float, now: float) -> float:
        self._forget(now)
        start = now - window
        tokens = 0.0
        for span in self._spans.get(model, ()):
            length = span.end - span.start
            if length <= 0:
                # All its tokens at one instant (a one-token reply): in the window or not.
                if start < span.end <= now:
                    tokens += span.tokens
                continue
            overlap = min(span.end, now) - max(span.start, start)
            if overlap > 0:
                tokens += span.tokens * overlap / length
        return tokens / window

    def models(self) -> list[str]:
        return sorted(self._spans)
