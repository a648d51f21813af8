"""Turns a Generation into OpenAI's SSE stream or into one aggregated response, for chat and completions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

import orjson

from services.gateway.errors import ApiError
from services.gateway.streaming.chunks import (
    ChoiceAccumulator,
    CompletionLogprobs,
    Json,
    chat_logprobs,
    error_event,
    finish_reason,
    stop_string,
    tool_call_delta,
    usage_object,
)
from services.gateway.streaming.generation import Generation

Kind = Literal["chat", "completion"]
DONE = b"data: [DONE]\n\n"


def sse(obj: Json) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@dataclass(frozen=True)
class ResponseMeta:
    kind: Kind
    id: str
    created: int
    model: str
    n: int
    logprobs: bool
    include_usage: bool
    continuous_usage: bool
    # Adds `cost` to the final usage (prompt, completion, cached tokens -> fields), when the client asked.
    cost: Callable[[int, int, int], Json] | None = None

    def final_usage(self, gen: Generation) -> Json:
        usage = usage_object(*gen.usage())
        return usage if self.cost is None else {**usage, **self.cost(*gen.usage())}

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"


async def stream_events(gen: Generation, meta: ResponseMeta, settling: set[asyncio.Task]) -> AsyncIterator[bytes]:
    """OpenAI's SSE: role deltas (chat), content deltas, finish reasons, the usage chunk, [DONE].
    If the client goes away the generator is cancelled: the request is then settled in the background."""
    base: Json = {"id": meta.id, "object": meta.chunk_object, "created": meta.created, "model": gen.outcome.model}
    if meta.include_usage and not meta.continuous_usage:
        base["usage"] = None
    chunk = _ChunkTemplate(base, meta.continuous_usage)
    finished: dict[int, str] = {}
    completion_logprobs: dict[int, CompletionLogprobs] = {}
    try:
        if meta.kind == "chat":
            roles = [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                for i in range(meta.n * gen.prompt_count)
            ]
            yield sse({**base, "choices": roles, **_continuous(gen, meta)})
        async for prompt_index, message in gen.messages():
            choices = []
            for choice in message.choices:
                reason = finish_reason(choice)
                if not choice.text and reason is None and not choice.logprobs and not choice.tool_calls:
                    continue
                index = prompt_index * meta.n + choice.index
                if reason is not None:
                    finished[index] = reason
                if meta.kind == "chat":
                    delta: Json = {"content": choice.text} if choice.text else {}
                    if choice.tool_calls:
                        delta["tool_calls"] = [tool_call_delta(c) for c in choice.tool_calls]
                    out: Json = {
                        "index": index,
                        "delta": delta,
                        "logprobs": chat_logprobs(choice) if meta.logprobs else None,
                        "finish_reason": reason,
                    }
                else:
                    logprobs = None
                    if meta.logprobs:
                        logprobs = completion_logprobs.setdefault(index, CompletionLogprobs()).add(choice)
                    out = {"index": index, "text": choice.text, "logprobs": logprobs, "finish_reason": reason}
                choices.append(out)
            if choices:
                yield chunk.render(choices, gen)
        # Durable before the usage chunk (and [DONE]) leaves: a crash from here on loses no usage.
        await gen.close(list(finished.values()))
        if meta.include_usage:
            yield sse({**base, "choices": [], "usage": meta.final_usage(gen)})
        if gen.error:
            yield sse(error_event(gen.error))
        yield DONE
    except BaseException:
        gen.settle_in_background(list(finished.values()), settling)
        raise


class _ChunkTemplate:
    """A request's content chunks: the fields every chunk repeats are encoded once, and each chunk only
    encodes its choices (and, with continuous usage, its usage)."""

    def __init__(self, base: Json, continuous_usage: bool) -> None:
        head = orjson.dumps({**base, "choices": None})
        self._prefix = b"data: " + head[: -len(b"null}")]
        self._continuous_usage = continuous_usage

    def render(self, choices: list[Json], gen: Generation) -> bytes:
        if self._continuous_usage:
            return b"".join(
                (self._prefix, orjson.dumps(choices), b',"usage":', orjson.dumps(usage_object(*gen.usage())), b"}\n\n")
            )
        return b"".join((self._prefix, orjson.dumps(choices), b"}\n\n"))


def _continuous(gen: Generation, meta: ResponseMeta) -> Json:
    return {"usage": usage_object(*gen.usage())} if meta.continuous_usage else {}


async def aggregate(gen: Generation, meta: ResponseMeta, settling: set[asyncio.Task]) -> Json:
    """The whole response at once, as a non-streamed OpenAI request gets it; its usage is durable
    before the body is returned."""
    choices: dict[int, ChoiceAccumulator] = {}
    try:
        async for prompt_index, message in gen.messages():
            for choice in message.choices:
                acc = choices.setdefault(prompt_index * meta.n + choice.index, ChoiceAccumulator())
                acc.text.append(choice.text)
                if choice.tool_calls:
                    acc.add_tool_calls(choice)
                if meta.logprobs:
                    if meta.kind == "chat":
                        acc.chat_logprobs.extend(chat_logprobs(choice)["content"])
                    else:
                        acc.completion_logprobs.add(choice)
                acc.finish_reason = finish_reason(choice) or acc.finish_reason
    except BaseException:
        gen.settle_in_background([c.finish_reason or "abort" for c in choices.values()], settling)
        raise
    await gen.close([c.finish_reason or "abort" for c in choices.values()])
    if gen.error:
        raise ApiError(500, gen.error, code="engine_error")
    out = []
    for index in sorted(choices):
        acc = choices[index]
        if meta.kind == "chat":
            logprobs = {"content": acc.chat_logprobs} if meta.logprobs else None
            out.append(
                {
                    "index": index,
                    "message": acc.message(),
                    "logprobs": logprobs,
                    "finish_reason": acc.finish_reason,
                }
            )
        else:
            logprobs = acc.completion_logprobs.as_json() if meta.logprobs else None
            out.append(
                {"index": index, "text": "".join(acc.text), "logprobs": logprobs, "finish_reason": acc.finish_reason}
            )
    return {
        "id": meta.id,
        "object": "chat.completion" if meta.kind == "chat" else "text_completion",
        "created": meta.created,
        "model": gen.outcome.model,
        "choices": out,
        "usage": meta.final_usage(gen),
    }


async def collect_one(gen: Generation, settling: set[asyncio.Task]) -> ChoiceAccumulator:
    """A one-choice generation read whole (for the APIs without `n`: Responses, Messages); its usage is
    durable before it returns."""
    acc = ChoiceAccumulator()
    try:
        async for _, message in gen.messages():
            for choice in message.choices:
                acc.text.append(choice.text)
                if choice.tool_calls:
                    acc.add_tool_calls(choice)
                acc.finish_reason = finish_reason(choice) or acc.finish_reason
                acc.stop_string = stop_string(choice) or acc.stop_string
    except BaseException:
        gen.settle_in_background([acc.finish_reason or "abort"], settling)
        raise
    await gen.close([acc.finish_reason or "abort"])
    if gen.error:
        raise ApiError(500, gen.error, code="engine_error")
    return acc
