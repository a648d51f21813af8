"""Issue 29's stall shapes against the real engine and gateway: each small request that made vLLM work
for minutes on one thread (and so stalled every tenant) is refused with a 400 naming its bound, before
any work; huge invalid arrays cost the gateway no memory; a prompt too long for the context is refused
without being tokenized; one key's cached prefixes are not another's; and the stack keeps serving."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import ADMIN_API_KEY, API_KEY, MODEL, start_gateway
from tools.hostile_shapes import Shape, refusal_problem, send, shapes
from tools.processes import ServiceProcess

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
# Before these bounds the first shape alone held the engine for minutes: a refusal must come long before.
PATIENCE_SECONDS = 60.0
SHAPES = shapes(MODEL)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
async def test_a_stalling_shape_is_refused_naming_its_bound(gateway_url: str, shape: Shape) -> None:
    async with httpx.AsyncClient(base_url=gateway_url, headers=HEADERS, timeout=PATIENCE_SECONDS) as http:
        reply = await send(http, shape)
        assert refusal_problem(shape, reply) is None, refusal_problem(shape, reply)
        assert reply.json()["error"]["type"] == "invalid_request_error"
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_a_prompt_too_long_for_the_context_is_refused_without_being_tokenized(gateway_url: str) -> None:
    """Before: /tokenize of 3.6 MB took 4.7 s of engine CPU, billed to nobody."""
    huge = "word " * 700_000
    async with httpx.AsyncClient(base_url=gateway_url, headers=HEADERS, timeout=PATIENCE_SECONDS) as http:
        for body in (
            {"model": MODEL, "prompt": huge, "max_tokens": 1},
            {"model": MODEL, "messages": [{"role": "user", "content": huge}], "max_tokens": 1},
        ):
            reply = await http.post("/v1/chat/completions" if "messages" in body else "/v1/completions", json=body)
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
    """Before: a 900 KB body of -1s made FastAPI build every union error: +1.1 GB of gateway memory; 1.9 M
    token ids +470 MB before their 400; 120,000 empty messages +440 MB."""
    before = _peak_rss_mb(lone_gateway)
    async with httpx.AsyncClient(base_url=lone_gateway.address, headers=HEADERS, timeout=PATIENCE_SECONDS) as http:
        for path, field, extra in (("/v1/completions", "prompt", {"max_tokens": 1}), ("/v1/embeddings", "input", {})):
            for bad in ([-1] * 150_000, [[1, 2]] + [[-1]] * 100_000, ["a"] + [7] * 150_000):
                reply = await http.post(path, json={"model": MODEL, field: bad, **extra})
                assert reply.status_code == 400, reply.text[:300]
                message = reply.json()["error"]["message"]
                assert message.startswith(f"{field}: item "), message
                assert len(message) < 200
        # Valid token ids, far more than the context: a plain union first tried them all as strings.
        ids = {"model": MODEL, "prompt": [1234] * 700_000, "max_tokens": 1}
        many_ids = await http.post("/v1/completions", json=ids)
        assert many_ids.status_code == 400 and "2048" in many_ids.json()["error"]["message"], many_ids.text[:300]
        empty = [{"role": "user", "content": ""}] * 100_000
        many_messages = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": empty})
        assert many_messages.status_code == 400 and "4096" in many_messages.json()["error"]["message"]
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
