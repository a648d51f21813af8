"""What an engine serves and what it has generated: shared by the settings, the model host and the vLLM adapter."""

from __future__ import annotations

from dataclasses import dataclass

from services.engine.generation import Usage


@dataclass(frozen=True)
class ServedModel:
    name: str
    root: str
    # The registered model it runs (a launch names it); the served name when the engine started with it.
    model_name: str = ""


@dataclass
class ServedTotals:
    """What the engine generated since start, counted from the token ids it streamed."""

    streams: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, usage: Usage) -> None:
        self.streams += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens
