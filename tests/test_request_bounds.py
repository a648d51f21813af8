"""Issue 29's stall shapes against the real engine and gateway: each small request that made vLLM work
for minutes on one thread (and so stalled every tenant) is refused with a 400 naming its bound, before
any work; huge invalid arrays cost the gateway no memory; a prompt too long for the context is refused
without being tokenized; one key's cached prefixes are not another's; and the stack keeps serving."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import ADMIN_API_KEY, API_KEY, MODEL, start_gateway
from tools.processes import ServiceProcess

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
# Before these bounds the first shape alone held the engine for minutes: a refusal must come long before.
PATIENCE_SECONDS = 60.0


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _tool(parameters: dict) -> list[dict]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


def _deep(levels: int) -> dict:
    deep: dict = {"type": "string"}
    for _ in range(levels):
        deep = {"type": "object", "properties": {"x": deep}}
    return deep


PATTERN = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^.{0,8000}$"}}, "required": ["a"]}
OPTIONAL = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3000)}}
WIDE = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 20} for i in range(40_000)}}

# (what, body, the words the 400 must hold)
SHAPES = [
    ("pattern in response_format", {**CHAT, "response_format": _schema_format(PATTERN)}, ["max_pattern_repeat"]),
    (
        "pattern in required tool parameters",
        {**CHAT, "tools": _tool(PATTERN), "tool_choice": "required"},
        ["tools[0].function.parameters", "max_pattern_repeat"],
    ),
    ("3000 optional properties", {**CHAT, "response_format": _schema_format(OPTIONAL)}, ["max_object_properties"]),
    ("150,000 stop strings", {**CHAT, "stop": [f"s{i}" for i in range(150_000)], "n": 64}, ["max_stop_strings"]),
    ("40,000 tool properties", {**CHAT, "tools": _tool(WIDE)}, ["max_schema_bytes"]),
    ("100,000 messages", {**CHAT, "messages": [{"role": "user", "content": ""}] * 100_000}, ["at most 4096"]),
    ("200-deep tool parameters", {**CHAT, "tools": _tool(_deep(200))}, ["max_json_depth"]),
    (
        "200-deep arguments in history",
        {
            **CHAT,
            "messages": [
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": json.dumps(_deep(200))}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ],
        },
        ["max_json_depth"],
    ),
    (
        "lone surrogate in tool parameters",
        {**CHAT, "tools": _tool({"type": "object", "description": "\ud800"})},
        ["lone surrogate"],
    ),
]


@pytest.mark.parametrize("what,body,words", SHAPES, ids=[s[0] for s in SHAPES])
async def test_a_stalling_shape_is_refused_naming_its_bound(gateway_url: str, what: str, body: dict, words: list[str]):
    async with httpx.AsyncClient(base_url=gateway_url, headers=HEADERS, timeout=PATIENCE_SECONDS) as http:
        # Sent as bytes: httpx's own JSON encoder refuses the lone surrogate that a client can still send.
        content = json.dumps(body).encode()
        reply = await http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
        assert reply.status_code == 400, reply.text[:500]
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error"
        for word in words:
            assert word in error["message"], error["message"]
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_a_prompt_too_long_for_the_context_is_refused_without_being_tokenized(gateway_url: str) -> None:
    """Before: /tokenize of 3.6 MB took 4.7 s of engine CPU, billed to nobody."""
    huge = "word " * 700_000
    async with httpx.AsyncClient(base_url=gateway_url, headers=HEADERS, timeout=PATIENCE_SECONDS) as http:
        for path, body in (
            ("/tokenize", {"model": MODEL, "prompt": huge}),
            ("/v1/completions", {"model": MODEL, "prompt": huge, "max_tokens": 1}),
        ):
            reply = await http.post(path, json=body)
            assert reply.status_code == 400, reply.text[:300]
            assert "refused without being tokenized" in reply.json()["error"]["message"]
        fits = await http.post("/tokenize", json={"model": MODEL, "prompt": "word " * 100})
        assert fits.status_code == 200 and fits.json()["count"] >= 100


@pytest.fixture(scope="module")
def lone_gateway(log_dir: Path, engine_address: str) -> Iterator[ServiceProcess]:
    """A gateway of its own, whose memory high-water mark only these requests move."""
    process = start_gateway(log_dir, engine_address, name="gateway-bounds", metering_addr="")
    try:
        yield process
    finally:
        process.stop()


def _peak_rss_mb(process: ServiceProcess) -> float:
    for line in Path(f"/proc/{process.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_huge_invalid_arrays_cost_the_gateway_no_memory(lone_gateway: ServiceProcess) -> None:
    """Before: a 900 KB body of -1s made FastAPI build every union error: +1.1 GB of gateway memory."""
    before = _peak_rss_mb(lone_gateway)
    async with httpx.AsyncClient(base_url=lone_gateway.address, headers=HEADERS, timeout=PATIENCE_SECONDS) as http:
        for path, field, extra in (("/v1/completions", "prompt", {"max_tokens": 1}), ("/v1/embeddings", "input", {})):
            for bad in ([-1] * 150_000, [[1, 2]] + [[-1]] * 100_000, ["a"] + [7] * 150_000):
                reply = await http.post(path, json={"model": MODEL, field: bad, **extra})
                assert reply.status_code == 400, reply.text[:300]
                message = reply.json()["error"]["message"]
                assert message.startswith(f"{field}: item "), message
                assert len(message) < 200
        valid = await http.post("/v1/completions", json={"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 1})
        assert valid.status_code == 200
    grown = _peak_rss_mb(lone_gateway) - before
    assert grown < 150, f"the gateway's peak memory grew {grown:.0f} MB"


async def test_one_keys_cached_prefixes_tell_another_key_nothing(gateway_url: str) -> None:
    """Before: cached_tokens told a key whether another key had sent the same prefix (a secret guessed right
    came back with 512 cached tokens, a wrong guess with 256)."""
    secret = f"The secret is {uuid.uuid4().hex}. " + "Remember it well. " * 40
    body = {"model": MODEL, "messages": [{"role": "user", "content": secret}], "max_tokens": 1}

    async def cached(key: str) -> int:
        async with httpx.AsyncClient(base_url=gateway_url, timeout=PATIENCE_SECONDS) as http:
            reply = await http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
        return reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    assert await cached(API_KEY) == 0
    assert await cached(ADMIN_API_KEY) == 0, "another key's prefix was a cache hit"
    assert await cached(API_KEY) > 0, "the key's own prefix should be a cache hit"
