"""Small requests that once made the engine or the gateway work for seconds to minutes on one thread (issue
29's probe), and a canary stream that measures what such work does to everyone else. Used by
tests/test_request_bounds.py and `make fuzz`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Shape:
    name: str
    path: str
    body: dict
    # Each must be in the 400's message.
    words: tuple[str, ...]


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _tool(parameters: dict) -> list[dict]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


def _deep(levels: int) -> dict:
    deep: dict = {"type": "string"}
    for _ in range(levels):
        deep = {"type": "object", "properties": {"x": deep}}
    return deep


def shapes(model: str) -> list[Shape]:
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    pattern = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^.{0,8000}$"}}, "required": ["a"]}
    optional = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)}}
    wide = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "description": "d" * 20} for i in range(40_000)},
    }
    deep_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": json.dumps(_deep(200))}}
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "tool_calls": [deep_call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    completions = "/v1/completions"
    return [
        Shape(
            "pattern in response_format",
            "",
            {**chat, "response_format": _schema_format(pattern)},
            ("max_pattern_repeat",),
        ),
        Shape(
            "pattern in required tool parameters",
            "",
            {**chat, "tools": _tool(pattern), "tool_choice": "required"},
            ("tools[0].function.parameters", "max_pattern_repeat"),
        ),
        Shape(
            "3000 optional properties",
            "",
            {**chat, "response_format": _schema_format(optional)},
            ("max_object_properties",),
        ),
        Shape(
            "150,000 stop strings",
            "",
            {**chat, "stop": [f"s{i}" for i in range(150_000)], "n": 64},
            ("max_stop_strings",),
        ),
        Shape("40,000 tool properties", "", {**chat, "tools": _tool(wide)}, ("max_schema_bytes",)),
        Shape(
            "100,000 messages", "", {**chat, "messages": [{"role": "user", "content": ""}] * 100_000}, ("at most 4096",)
        ),
        Shape("200-deep tool parameters", "", {**chat, "tools": _tool(_deep(200))}, ("max_json_depth",)),
        Shape("200-deep arguments in history", "", {**chat, "messages": history}, ("max_json_depth",)),
        Shape(
            "lone surrogate in tool parameters",
            "",
            {**chat, "tools": _tool({"type": "object", "description": "\ud800"})},
            ("lone surrogate",),
        ),
        Shape("150,000 invalid prompts", completions, {"model": model, "prompt": [-1] * 150_000}, ("prompt: item 0",)),
        Shape(
            "150,000 invalid inputs",
            "/v1/embeddings",
            {"model": model, "input": ["a"] + [7] * 150_000},
            ("input: item 1",),
        ),
        Shape(
            "100,000 documents to rerank",
            "/v1/rerank",
            {"model": model, "query": "q", "documents": ["d"] * 100_000},
            ("At most 256 documents",),
        ),
        Shape(
            "100,000 pairs to score",
            "/v1/score",
            {"model": model, "text_1": "q", "text_2": ["d"] * 100_000},
            ("At most 256 documents",),
        ),
        Shape(
            "a prompt longer than the context",
            "/tokenize",
            {"model": model, "prompt": "word " * 700_000},
            ("refused without being tokenized",),
        ),
    ]


async def send(http: httpx.AsyncClient, shape: Shape) -> httpx.Response:
    """Sent as bytes: httpx's own JSON encoder refuses the lone surrogate that a client can still send."""
    return await http.post(
        shape.path or "/v1/chat/completions",
        content=json.dumps(shape.body).encode(),
        headers={"content-type": "application/json"},
    )


def refusal_problem(shape: Shape, reply: httpx.Response) -> str | None:
    """Why the reply is not the 400 naming the bound, or None."""
    if reply.status_code != 400:
        return f"{shape.name}: {reply.status_code} {reply.text[:200]}"
    message = reply.json()["error"]["message"]
    missing = [w for w in shape.words if w not in message]
    return f"{shape.name}: the 400 does not name {missing}: {message[:200]}" if missing else None


class Canary:
    """Streams short completions one after another and keeps the longest wait for the next event (the first
    chunk or the next one): what another tenant's request made everyone wait."""

    def __init__(self, http: httpx.AsyncClient, model: str, max_tokens: int = 16) -> None:
        self._http = http
        self._body = {
            "model": model,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
        self.longest_wait = 0.0
        self.streams = 0

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            last = time.monotonic()
            async with self._http.stream("POST", "/v1/chat/completions", json=self._body) as reply:
                async for _ in reply.aiter_lines():
                    now = time.monotonic()
                    self.longest_wait = max(self.longest_wait, now - last)
                    last = now
            self.streams += 1
