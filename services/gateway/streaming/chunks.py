"""Shapes engine messages into OpenAI's chunk and response objects (plain dicts, encoded once by the caller)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.outcome import FINISH_REASONS

Json = dict[str, Any]


def usage_object(prompt: int, completion: int, cached: int) -> Json:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _top(top: pb.TopLogprob) -> Json:
    return {"token": top.token, "logprob": top.logprob, "bytes": list(top.token.encode())}


def chat_logprobs(choice: pb.ChoiceDelta) -> Json:
    return {
        "content": [
            {**_top(lp), "top_logprobs": [_top(t) for t in lp.top_logprobs]}  # type: ignore[arg-type]
            for lp in choice.logprobs
        ]
    }


@dataclass
class CompletionLogprobs:
    """The legacy completions logprobs object, built up across deltas (offsets run on)."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)
    offset: int = 0

    def add(self, choice: pb.ChoiceDelta) -> Json:
        """Adds a delta's logprobs and returns the object for just that delta."""
        delta = CompletionLogprobs(offset=self.offset)
        for lp in choice.logprobs:
            for target in (self, delta):
                target.tokens.append(lp.token)
                target.token_logprobs.append(lp.logprob)
                target.top_logprobs.append({t.token: t.logprob for t in lp.top_logprobs})
                target.text_offset.append(target.offset)
                target.offset += len(lp.token)
        return delta.as_json()

    def as_json(self) -> Json:
        return {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }


def tool_call_delta(call: pb.ToolCallDelta) -> Json:
    """OpenAI's streamed fragment: the first of a call carries its id, type and name."""
    out: Json = {"index": call.index}
    function: Json = {}
    if call.id:
        out["id"] = call.id
        out["type"] = "function"
    if call.name:
        function["name"] = call.name
    if call.arguments or call.id:
        function["arguments"] = call.arguments
    out["function"] = function
    return out


@dataclass
class ChoiceAccumulator:
    """One choice of a non-streamed response."""

    text: list[str] = field(default_factory=list)
    chat_logprobs: list[Json] = field(default_factory=list)
    completion_logprobs: CompletionLogprobs = field(default_factory=CompletionLogprobs)
    finish_reason: str | None = None
    tool_calls: dict[int, Json] = field(default_factory=dict)
    # The stop string that ended it, when one did.
    stop_string: str | None = None

    def add_tool_calls(self, choice: pb.ChoiceDelta) -> None:
        for part in choice.tool_calls:
            call = self.tool_calls.setdefault(
                part.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            call["id"] = call["id"] or part.id
            call["function"]["name"] += part.name
            call["function"]["arguments"] += part.arguments

    def message(self) -> Json:
        """The chat message: content is null when the model only called tools, as OpenAI's."""
        text = "".join(self.text)
        if not self.tool_calls:
            return {"role": "assistant", "content": text}
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {"role": "assistant", "content": text or None, "tool_calls": calls}


def finish_reason(choice: pb.ChoiceDelta) -> str | None:
    return FINISH_REASONS[choice.finish_reason]


def stop_string(choice: pb.ChoiceDelta) -> str | None:
    """The stop string that ended the choice, when one did."""
    return choice.stop_string if choice.WhichOneof("matched_stop") == "stop_string" else None


def error_event(message: str, code: str = "engine_error") -> Json:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
