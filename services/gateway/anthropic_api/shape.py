"""A Generation in Anthropic's shapes: one message, or its SSE events (message_start, a content block per
text run and per tool call with its deltas, message_delta with the stop reason and the output tokens,
message_stop). The usage is the engine's, as everywhere: `input_tokens` is the prompt less what the prefix
cache served (`cache_read_input_tokens`), as Anthropic counts them. Like OpenAI's stream, the usage is
durable before message_delta leaves; a client gone mid-stream is billed what the engine made."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import orjson

from services.gateway.streaming.chunks import Json, finish_reason, stop_string
from services.gateway.streaming.generation import Generation
from services.gateway.streaming.sse import ResponseMeta, collect_one

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def usage(prompt: int, completion: int, cached: int) -> Json:
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    }


def _stop(reason: str | None, stop_string: str | None) -> tuple[str | None, str | None]:
    if reason == "stop" and stop_string:
        return "stop_sequence", stop_string
    return _STOP_REASONS.get(reason or ""), None


def _tool_input(arguments: str) -> Json:
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _event(kind: str, body: Json) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **body}) + b"\n\n"


def _message(meta: ResponseMeta, gen: Generation, content: list[Json], stop: tuple[str | None, str | None]) -> Json:
    return {
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": gen.outcome.model,
        "content": content,
        "stop_reason": stop[0],
        "stop_sequence": stop[1],
        "usage": {**usage(*gen.usage()), **(meta.cost(*gen.usage()) if meta.cost else {})},
    }


async def message_body(gen: Generation, meta: ResponseMeta, settling: set[asyncio.Task]) -> Json:
    acc = await collect_one(gen, settling)
    content: list[Json] = []
    if text := "".join(acc.text):
        content.append({"type": "text", "text": text})
    for index in sorted(acc.tool_calls):
        call = acc.tool_calls[index]
        content.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": call["function"]["name"],
                "input": _tool_input(call["function"]["arguments"]),
            }
        )
    return _message(meta, gen, content, _stop(acc.finish_reason, acc.stop_string))


async def message_events(gen: Generation, meta: ResponseMeta, settling: set[asyncio.Task]) -> AsyncIterator[bytes]:
    reason: str | None = None
    matched = None
    block = -1
    open_kind = ""  # "text", or the engine's index of the tool call the open block streams
    started = False
    try:
        async for _, message in gen.messages():
            if not started:
                # The prompt's count is known once the engine answers: message_start carries it.
                started = True
                start = _message(meta, gen, [], (None, None))
                start["usage"]["output_tokens"] = 0
                yield _event("message_start", {"message": start})
            for choice in message.choices:
                if choice.text:
                    if open_kind != "text":
                        if block >= 0:
                            yield _event("content_block_stop", {"index": block})
                        block, open_kind = block + 1, "text"
                        yield _event(
                            "content_block_start", {"index": block, "content_block": {"type": "text", "text": ""}}
                        )
                    yield _event(
                        "content_block_delta", {"index": block, "delta": {"type": "text_delta", "text": choice.text}}
                    )
                for call in choice.tool_calls:
                    if call.id or open_kind != f"tool:{call.index}":
                        if block >= 0:
                            yield _event("content_block_stop", {"index": block})
                        block, open_kind = block + 1, f"tool:{call.index}"
                        tool = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
                        yield _event("content_block_start", {"index": block, "content_block": tool})
                    if call.arguments:
                        delta = {"type": "input_json_delta", "partial_json": call.arguments}
                        yield _event("content_block_delta", {"index": block, "delta": delta})
                reason = finish_reason(choice) or reason
                matched = stop_string(choice) or matched
        if block >= 0:
            yield _event("content_block_stop", {"index": block})
        # Durable before the usage leaves: a crash from here on loses none.
        await gen.close([reason or "abort"])
        if not started:
            yield _event("message_start", {"message": _message(meta, gen, [], (None, None))})
        if gen.error:
            yield _event("error", {"error": {"type": "api_error", "message": gen.error}})
            return
        stop_reason, stop_sequence = _stop(reason, matched)
        final = usage(*gen.usage())
        if meta.cost is not None:
            final |= meta.cost(*gen.usage())
        yield _event(
            "message_delta", {"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": final}
        )
        yield _event("message_stop", {})
    except BaseException:
        gen.settle_in_background([reason or "abort"], settling)
        raise
