"""A Generation as a Responses API response: one object, or its typed SSE events in order
(response.created, response.in_progress, per output item: output_item.added, for a message
content_part.added, output_text.delta ... output_text.done, content_part.done, for a function call
function_call_arguments.delta ... .done, then output_item.done; and response.completed, or
response.incomplete when cut by max_output_tokens). The usage is the engine's; in a stream it is durable
before the final event leaves, and a client gone mid-stream is billed what the engine made."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from services.gateway.streaming.chunks import Json, finish_reason
from services.gateway.streaming.generation import Generation
from services.gateway.streaming.sse import ResponseMeta, collect_one


def usage(prompt: int, completion: int, cached: int) -> Json:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _message_item(item_id: str, text: str, status: str) -> Json:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call: Json, status: str) -> Json:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"] if status == "completed" else "",
        "status": status,
    }


def _response(meta: ResponseMeta, gen: Generation, output: list[Json], reason: str | None, done: bool) -> Json:
    status = "in_progress" if not done else ("incomplete" if reason == "length" else "completed")
    body: Json = {
        "id": meta.id,
        "object": "response",
        "created_at": meta.created,
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "error": None,
        "model": gen.outcome.model,
        "output": output,
        "store": False,
        "previous_response_id": None,
        "usage": None,
    }
    if done:
        body["usage"] = {**usage(*gen.usage()), **(meta.cost(*gen.usage()) if meta.cost else {})}
    return body


async def response_body(gen: Generation, meta: ResponseMeta, settling: set[asyncio.Task]) -> Json:
    acc = await collect_one(gen, settling)
    output: list[Json] = []
    if text := "".join(acc.text):
        output.append(_message_item(_item_id("msg"), text, "completed"))
    output += [_call_item(_item_id("fc"), acc.tool_calls[i], "completed") for i in sorted(acc.tool_calls)]
    return _response(meta, gen, output, acc.finish_reason, True)


@dataclass
class _Events:
    """The stream's events, numbered in order; the items as they build up."""

    meta: ResponseMeta
    gen: Generation
    number: int = 0
    output: list[Json] = field(default_factory=list)

    def event(self, kind: str, body: Json) -> bytes:
        payload = orjson.dumps({"type": kind, "sequence_number": self.number, **body})
        self.number += 1
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


async def response_events(gen: Generation, meta: ResponseMeta, settling: set[asyncio.Task]) -> AsyncIterator[bytes]:
    events = _Events(meta, gen)
    reason: str | None = None
    text_item: tuple[int, str, list[str]] | None = None  # (output index, id, text so far)
    calls: dict[int, tuple[int, str, Json]] = {}  # engine index -> (output index, id, call so far)
    try:
        yield events.event("response.created", {"response": _response(meta, gen, [], None, False)})
        yield events.event("response.in_progress", {"response": _response(meta, gen, [], None, False)})
        async for _, message in gen.messages():
            for choice in message.choices:
                if choice.text:
                    if text_item is None:
                        text_item = (len(events.output), _item_id("msg"), [])
                        events.output.append({})
                        index, item_id, _ = text_item
                        added = {"output_index": index, "item": _message_item(item_id, "", "in_progress")}
                        yield events.event("response.output_item.added", added)
                        part = {"type": "output_text", "text": "", "annotations": []}
                        yield events.event(
                            "response.content_part.added",
                            {"item_id": item_id, "output_index": index, "content_index": 0, "part": part},
                        )
                    index, item_id, text = text_item
                    text.append(choice.text)
                    delta = {"item_id": item_id, "output_index": index, "content_index": 0, "delta": choice.text}
                    yield events.event("response.output_text.delta", {**delta, "logprobs": []})
                for part in choice.tool_calls:
                    if part.index not in calls:
                        call = {"id": part.id, "function": {"name": part.name, "arguments": ""}}
                        calls[part.index] = (len(events.output), _item_id("fc"), call)
                        events.output.append({})
                        index, item_id, _ = calls[part.index]
                        item = _call_item(item_id, call, "in_progress")
                        yield events.event("response.output_item.added", {"output_index": index, "item": item})
                    else:
                        _, _, call = calls[part.index]
                        call["id"] = call["id"] or part.id
                        call["function"]["name"] += part.name
                    index, item_id, call = calls[part.index]
                    if part.arguments:
                        call["function"]["arguments"] += part.arguments
                        delta = {"item_id": item_id, "output_index": index, "delta": part.arguments}
                        yield events.event("response.function_call_arguments.delta", delta)
                reason = finish_reason(choice) or reason
        # Durable before the final events leave: a crash from here on loses no usage.
        await gen.close([reason or "abort"])
        if gen.error:
            yield events.event("error", {"code": "engine_error", "message": gen.error, "param": None})
            return
        if text_item is not None:
            index, item_id, text = text_item
            whole = "".join(text)
            where = {"item_id": item_id, "output_index": index, "content_index": 0}
            yield events.event("response.output_text.done", {**where, "text": whole, "logprobs": []})
            part = {"type": "output_text", "text": whole, "annotations": []}
            yield events.event("response.content_part.done", {**where, "part": part})
            events.output[index] = _message_item(item_id, whole, "completed")
            yield events.event("response.output_item.done", {"output_index": index, "item": events.output[index]})
        for index, item_id, call in sorted(calls.values(), key=lambda c: c[0]):
            arguments = call["function"]["arguments"]
            done = {"item_id": item_id, "output_index": index, "arguments": arguments, "name": call["function"]["name"]}
            yield events.event("response.function_call_arguments.done", done)
            events.output[index] = _call_item(item_id, call, "completed")
            yield events.event("response.output_item.done", {"output_index": index, "item": events.output[index]})
        final = _response(meta, gen, events.output, reason, True)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield events.event(kind, {"response": final})
    except BaseException:
        gen.settle_in_background([reason or "abort"], settling)
        raise
