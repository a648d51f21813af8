"""What the tests send and how they read answers: engine requests, a metering event, OpenAI HTTP calls and
their errors, a streamed chat read to its usage chunk."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.metering.v1 import metering_pb2 as mpb

from tests.stack import ADMIN_API_KEY, API_KEY, MODEL

# Two keys whose requests the usage tests tell apart: one finishes its streams, one hangs up.
FINISHER, CANCELLER = "sk-finisher", "sk-canceller"
KEYS = f"finisher:{FINISHER},canceller:{CANCELLER},test-admin:{ADMIN_API_KEY}"

QUESTION = "What is the capital of France?"


def chat(*contents: str) -> pb.Chat:
    return pb.Chat(messages=[pb.ChatMessage(role=pb.ROLE_USER, content=c) for c in contents])


def request(**sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=f"test-{uuid.uuid4().hex[:8]}",
        chat=chat(QUESTION),
        sampling=pb.SamplingParams(**{"max_tokens": 12, "temperature": 0.0, **sampling}),
    )


def text_of(messages: list[pb.GenerateResponse], index: int = 0) -> str:
    return "".join(c.text for m in messages for c in m.choices if c.index == index)


def token_ids_of(messages: list[pb.GenerateResponse], index: int | None = None) -> list[int]:
    return [t for m in messages for c in m.choices if index is None or c.index == index for t in c.token_ids]


def finish_of(messages: list[pb.GenerateResponse], index: int = 0) -> pb.ChoiceDelta:
    return next(c for m in messages for c in m.choices if c.index == index and c.finish_reason)


def event(i: int, source: str = "test-source", **changes: object) -> mpb.UsageEvent:
    e = mpb.UsageEvent(
        event_id=f"ev-{i}",
        source=source,
        model="m1",
        api_key_id="team-a",
        endpoint="/v1/chat/completions",
        streamed=True,
        finish_reason="stop",
        status=mpb.REQUEST_STATUS_OK,
        prompt_tokens=10,
        completion_tokens=i % 7 + 1,
        cached_tokens=0,
        time_to_first_token_seconds=0.05,
        generation_seconds=0.2,
        request_seconds=0.3,
    )
    e.occurred_at.FromNanoseconds(time.time_ns())
    for name, value in changes.items():
        setattr(e, name, value)
    return e


async def post(url: str, body: bytes | dict, key: str | None = API_KEY, **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with httpx.AsyncClient(timeout=60) as http:
        if isinstance(body, dict):
            return await http.post(url, json=body, headers=headers)
        return await http.post(url, content=body, headers={"content-type": "application/json", **headers})


def assert_error(reply: httpx.Response, status: int, *words: str) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"]
    assert "Traceback" not in reply.text
    return error


async def stream_chat(
    url: str,
    key: str,
    max_tokens: int,
    hang_up_after: float | None = None,
    text: str = "Count to ten.",
    model: str = MODEL,
) -> tuple[int, int] | None:
    """A streamed chat; the usage chunk's (prompt, completion), or None if it hung up (or was cut)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }

    async def read() -> tuple[int, int] | None:
        async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {key}"}) as http:
            async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
                assert reply.status_code == 200, await reply.aread()
                usage = None
                async for line in reply.aiter_lines():
                    if line.startswith("data: {") and '"usage":{' in line:
                        u = json.loads(line[6:])["usage"]
                        usage = (u["prompt_tokens"], u["completion_tokens"])
                return usage

    if hang_up_after is None:
        try:
            return await read()
        except httpx.HTTPError:
            return None
    try:
        return await asyncio.wait_for(read(), hang_up_after)
    except (TimeoutError, httpx.HTTPError):
        return None
