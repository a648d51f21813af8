"""What one OpenAI request produced, once it is over: what its metrics, its span and its usage event are made from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from llmserve.engine.v1 import engine_pb2 as pb

# The engine's finish reasons as OpenAI names them.
FINISH_REASONS = {
    pb.FINISH_REASON_UNSPECIFIED: None,
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_ABORT: "abort",
    pb.FINISH_REASON_ERROR: "error",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


@dataclass
class Outcome:
    """What one request produced: for metrics and the usage event."""

    request_id: str
    endpoint: str
    model: str
    api_key_id: str
    streamed: bool
    # The registered model the served `model` (a launch's uid) runs; "" when unknown (metering then
    # takes `model`).
    model_name: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # Images in the prompt, inputs of an embeddings request: priced per unit where the price says so.
    images: int = 0
    embedding_inputs: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | abort | error
    time_to_first_token_seconds: float = 0.0
    generation_seconds: float = 0.0
    duration_seconds: float = 0.0
    trace_id: str = ""
    span_id: str = ""
    # The engine calls behind it, and the engine that ran them: confirmed to that engine once the usage
    # event is durable.
    engine_request_ids: list[str] = field(default_factory=list)
    engine_address: str = ""


OutcomeSink = Callable[[Outcome], Awaitable[None]]
