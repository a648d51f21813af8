"""The bodies of POST /v1/rerank and POST /v1/score, as vLLM takes them (text only), with the fields
xinference-client's `rerank` sends."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field, field_validator

from services.gateway.openai_api.protocol import Strict


class Document(BaseModel):
    text: str


class ScoringBody(Strict):
    model: str
    # Each pair (a cross-encoder) or each text (an embedding model) cut to this many tokens; -1: the model's
    # length. Unset: a longer one is refused.
    truncate_prompt_tokens: int | None = Field(None, ge=-1, lt=2**32)
    user: str | None = None

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _not_zero(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("truncate_prompt_tokens: a positive number of tokens, or -1 for the model's length")
        return value


class RerankBody(ScoringBody):
    query: str
    documents: list[str | Document]
    # 0 or unset: every document.
    top_n: int | None = Field(None, ge=0)
    return_documents: bool | None = None
    # xinference-client's: a document is never split into chunks here; `return_len` adds its token meta.
    max_chunks_per_doc: int | None = None
    return_len: bool | None = None
    kwargs: str | None = None

    @field_validator("max_chunks_per_doc")
    @classmethod
    def _no_chunks(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("max_chunks_per_doc: documents are not split into chunks here; leave it unset")
        return value

    @field_validator("kwargs")
    @classmethod
    def _no_kwargs(cls, value: str | None) -> str | None:
        if value is not None and value.strip() not in ("", "{}"):
            try:
                extra = json.loads(value)
            except json.JSONDecodeError:
                extra = value
            raise ValueError(f"kwargs: no extra arguments are taken here; got {extra!r}")
        return value

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ScoreBody(ScoringBody):
    # One text against each of text_2, or as many as text_2 (pairwise).
    text_1: str | list[str]
    text_2: str | list[str]

    def pairs(self) -> tuple[list[str], list[str]]:
        first = [self.text_1] if isinstance(self.text_1, str) else self.text_1
        second = [self.text_2] if isinstance(self.text_2, str) else self.text_2
        if not first or not second:
            raise ValueError("text_1 and text_2 each need at least one text")
        if len(first) not in (1, len(second)):
            raise ValueError(f"text_1 has {len(first)} texts: give one, or one per text_2 ({len(second)})")
        return first, second
