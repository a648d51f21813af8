"""The body of POST /v1/embeddings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.gateway.openai_api.protocol import PromptInput, Strict, one_or_many


class EmbeddingRequest(Strict):
    model: str
    input: PromptInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, lt=2**32)
    user: str | None = None

    def inputs(self) -> list[str | list[int]]:
        """Each input: a string, or one token-id list."""
        return one_or_many(self.input, "input")
