"""The body of POST /v1/completions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.gateway.openai_api.protocol import PromptInput, ResponseFormat, SamplingFields, one_or_many


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    echo: Literal[False] = False
    best_of: int | None = None

    @model_validator(mode="after")
    def _best_of_is_n(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported (only best_of == n)")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One or more prompts: strings, or token-id lists."""
        return one_or_many(self.prompt, "prompt")
