"""The usage event as the ledger sees it, and the checks an event must pass before it is counted."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

STATUSES = ("ok", "abort", "error")
# Bounds of one event's fields. No request comes near them (a context is at most millions of tokens,
# a request at most hours), and they keep every sum exact: int64 totals would need more than 2^31
# events at the token bound to overflow.
MAX_TOKENS = 2**32 - 1
MAX_SECONDS = 7 * 24 * 3600.0
MAX_TEXT = 1024
# Who and what an event bills: too long, it cannot be counted under its name, and is refused.
_IDENTITY_FIELDS = ("event_id", "source", "model", "api_key_id", "caller")
# What describes it: too long, it is cut to the bound and the event counted all the same (a billable
# event is never refused for how it describes itself).
_DESCRIPTIVE_FIELDS = ("endpoint", "finish_reason", "trace_id", "model_name")


@dataclass(frozen=True, slots=True)
class UsageEvent:
    event_id: str
    source: str
    occurred_at: float  # seconds since the epoch
    model: str
    api_key_id: str
    endpoint: str
    streamed: bool
    finish_reason: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    time_to_first_token_seconds: float
    generation_seconds: float
    request_seconds: float
    trace_id: str = ""
    # The registered model `model` runs (a launch's uid runs one); empty: `model` itself.
    model_name: str = ""
    # The internal caller of a request that did not come through a gateway (metered by the engine).
    caller: str = ""
    # Set by metering when it records the event: micro-units at the price in force at occurred_at, and
    # that price's id (None: no price was in force; the event is unpriced, never free).
    cost_micro: int | None = None
    price_id: str = ""
    # Images in the prompt and inputs of an embeddings request (priced per unit where the price says).
    images: int = 0
    embedding_inputs: int = 0


class Rejection(ValueError):
    """Why an event is refused; `kind` is a bounded label for metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def clamped(event: UsageEvent) -> UsageEvent:
    """The event with its descriptive fields cut to MAX_TEXT characters (itself when none is longer)."""
    long = {
        name: getattr(event, name)[:MAX_TEXT] for name in _DESCRIPTIVE_FIELDS if len(getattr(event, name)) > MAX_TEXT
    }
    return dataclasses.replace(event, **long) if long else event


def check(event: UsageEvent, now: float, max_age_seconds: float, max_future_seconds: float) -> None:
    """Raises Rejection when the event cannot be counted (its descriptive fields are clamped, not checked)."""
    for name in ("event_id", "source", "model"):
        if not getattr(event, name):
            raise Rejection("missing_field", f"{name} is missing")
    if event.status not in STATUSES:
        raise Rejection("missing_field", "status is missing (ok, abort or error)")
    if event.occurred_at <= 0:
        raise Rejection("missing_field", "occurred_at is missing")
    if event.occurred_at < now - max_age_seconds:
        raise Rejection("too_old", f"occurred_at is more than {max_age_seconds:.0f} s in the past")
    if event.occurred_at > now + max_future_seconds:
        raise Rejection("in_future", f"occurred_at is more than {max_future_seconds:.0f} s in the future")
    for name in _IDENTITY_FIELDS:
        if len(getattr(event, name)) > MAX_TEXT:
            raise Rejection("out_of_range", f"{name} is longer than {MAX_TEXT} characters")
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "images", "embedding_inputs"):
        value = getattr(event, name)
        if value < 0:
            raise Rejection("negative", f"{name} is negative")
        if value > MAX_TOKENS:
            raise Rejection("out_of_range", f"{name} is {value}, above the bound {MAX_TOKENS}")
    if event.cached_tokens > event.prompt_tokens:
        raise Rejection("inconsistent", "cached_tokens exceeds prompt_tokens")
    for name in ("time_to_first_token_seconds", "generation_seconds", "request_seconds"):
        value = getattr(event, name)
        if value < 0 or not math.isfinite(value):
            raise Rejection("negative", f"{name} must be a finite, non-negative number")
        if value > MAX_SECONDS:
            raise Rejection("out_of_range", f"{name} is {value}, above the bound {MAX_SECONDS:.0f} s")
