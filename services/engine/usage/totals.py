"""What the engine generated since start, counted from the token ids it streamed: what GetLoad reports and
what metering's totals must equal."""

from __future__ import annotations

from dataclasses import dataclass

from services.engine.generation import Usage


@dataclass
class UsageTotals:
    streams: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, usage: Usage) -> None:
        self.streams += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens
