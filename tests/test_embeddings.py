"""Embeddings end to end: the built-in all-MiniLM-L6-v2 launched on the session's engine with PyPI's
xinference-client (model_type="embedding"), vectors through /v1/embeddings (xinference-client's
create_embedding and the openai SDK) compared with sentence-transformers' own on the same folder, usage
exact (the model's own token count) and metered with zero completion tokens, OpenAI's 400s."""

from __future__ import annotations

import asyncio
import base64
import random
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from llmserve.metering.v1 import metering_pb2 as mpb
from openai import OpenAI
from xinference_client import RESTfulClient

from services.contracts.builtin_models import EMBEDDED_MODEL_NAME, EMBEDDING_NAME
from services.contracts.pricing import event_cost, from_message
from services.engine.builtin_models import embedding_model_folder
from tests.credentials import metering_client
from tests.stack import (
    ADMIN_API_KEY,
    API_KEY,
    engine_baseline,
    metering_reaches_engine,
    metering_totals,
    start_gateway,
    start_metering,
    wait_for,
)
from tools.processes import ServiceProcess

UID = "minilm"
TEXTS = ["The cat sits on the mat.", "A feline rests on a rug.", "Stock markets fell sharply today."]


@pytest.fixture(scope="module")
def metering(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = start_metering(log_dir, tmp_path_factory.mktemp("metering-embeddings"), name="metering-embeddings")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(
    log_dir: Path, engine_address: str, metering: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    process = start_gateway(
        log_dir,
        engine_address,
        "gateway-embeddings",
        metering_addr=metering.address,
        data_dir=str(tmp_path_factory.mktemp("gateway-embeddings")),
    )
    xinference = RESTfulClient(process.address, api_key=ADMIN_API_KEY)
    xinference.launch_model(EMBEDDING_NAME, model_type="embedding", model_uid=UID)
    try:
        yield process
    finally:
        xinference.terminate_model(UID)
        process.stop()


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(embedding_model_folder(), device="cpu").encode(TEXTS, normalize_embeddings=True)


def test_vectors_match_sentence_transformers_and_usage_is_exact(
    gateway: ServiceProcess, metering: ServiceProcess, reference: np.ndarray
) -> None:
    before = asyncio.run(metering_totals(metering.address))
    xinference = RESTfulClient(gateway.address, api_key=ADMIN_API_KEY)
    assert xinference.describe_model(UID)["model_type"] == "embedding"
    reply = xinference.get_model(UID).create_embedding(TEXTS)
    vectors = np.array([d["embedding"] for d in sorted(reply["data"], key=lambda d: d["index"])])
    assert vectors.shape == (3, 384)
    cosines = (vectors * reference).sum(axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.999, cosines
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedding_model_folder())
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert reply["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    # Similar sentences sit closer than unrelated ones.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    # Metered as one request (delivery is asynchronous: the next test's baseline must not race it).
    asyncio.run(wait_for(metered_since(metering, before, tokens, 1), 30, "metering to hold the embedding request"))


def metered_since(
    metering: ServiceProcess, before: mpb.Totals, prompt_tokens: int, requests: int
) -> Callable[[], Awaitable[bool]]:
    async def metered() -> bool:
        totals = await metering_totals(metering.address)
        return (totals.prompt_tokens - before.prompt_tokens, totals.requests - before.requests) == (
            prompt_tokens,
            requests,
        )

    return metered


def test_openai_sdk_float_base64_token_ids_and_metering(
    gateway: ServiceProcess, metering: ServiceProcess, reference: np.ndarray
) -> None:
    client = OpenAI(base_url=f"{gateway.address}/v1", api_key=API_KEY)
    before = asyncio.run(metering_totals(metering.address))
    floats = client.embeddings.create(model=UID, input=TEXTS[0])
    assert len(floats.data) == 1 and len(floats.data[0].embedding) == 384
    raw = httpx.post(
        f"{gateway.address}/v1/embeddings",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": UID, "input": TEXTS[0], "encoding_format": "base64"},
    ).json()
    decoded = struct.unpack("<384f", base64.b64decode(raw["data"][0]["embedding"]))
    assert np.allclose(decoded, floats.data[0].embedding, atol=1e-6)
    ids = [101, 1996, 4937, 7719, 2006, 1996, 13523, 1012, 102]
    by_ids = client.embeddings.create(model=UID, input=[ids, ids])
    assert [d.index for d in by_ids.data] == [0, 1] and by_ids.usage.prompt_tokens == 2 * len(ids)
    # The same text as ids (what the tokenizer makes of it) gives the same vector.
    assert np.allclose(by_ids.data[0].embedding, reference[0], atol=1e-3)
    expected = floats.usage.prompt_tokens + raw["usage"]["prompt_tokens"] + by_ids.usage.prompt_tokens

    asyncio.run(
        wait_for(metered_since(metering, before, expected, 3), 30, "metering to hold the three embedding requests")
    )
    after = asyncio.run(metering_totals(metering.address))
    assert after.completion_tokens == before.completion_tokens


@pytest.mark.parametrize(
    "body, words",
    [
        ({"input": TEXTS[0], "dimensions": 128}, "cannot shorten"),
        ({"input": []}, "must not be empty"),
        ({"input": [""]}, "empty"),
        ({"input": [[999999]]}, "vocabulary"),
        ({"input": " ".join(["word"] * 300)}, "at most 256"),
        ({"input": TEXTS[0], "encoding_format": "int8"}, "encoding_format"),
        ({"input": TEXTS[0], "model": EMBEDDED_MODEL_NAME}, "does not embed"),
    ],
)
def test_bad_requests_are_openai_400s(gateway: ServiceProcess, body: dict, words: str) -> None:
    reply = httpx.post(
        f"{gateway.address}/v1/embeddings",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": UID, **body},
        timeout=60,
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"


def test_chat_on_an_embedding_model_is_a_400(gateway: ServiceProcess) -> None:
    reply = httpx.post(
        f"{gateway.address}/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": UID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert reply.status_code == 400 and "embedding model" in reply.json()["error"]["message"]


async def test_clients_hanging_up_mid_embedding_are_billed_exactly_what_the_engine_counted(
    gateway: ServiceProcess, engine_address: str, log_dir: Path, tmp_path: Path
) -> None:
    """32 requests of 32 long inputs, 24 of them cut by the client from 5 ms to 0.4 s after sending. What
    the engine embedded is billed whether or not its client stayed: metering ends equal to the engine's
    count. (An answer lost between engine and gateway is billed from the engine's held usage: the fake-engine
    unit test in services/gateway provokes that.)"""
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-embed-hangups")
    hanging = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-embed-hangups",
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g"),
    )
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
    body = {"model": UID, "input": [f"{i} {text}" for i in range(32)]}
    rng = random.Random(11)
    try:
        before = await engine_baseline(engine_address, metering.address)
        slots = asyncio.Semaphore(6)

        async def one(i: int) -> bool:
            timeout = None if i % 4 == 0 else rng.uniform(0.005, 0.4)
            async with slots, httpx.AsyncClient(timeout=timeout or 120) as http:
                try:
                    reply = await http.post(
                        f"{hanging.address}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
                    )
                except httpx.TimeoutException:
                    return False
                assert reply.status_code == 200, reply.text
                return True

        answered = await asyncio.gather(*(one(i) for i in range(32)))
        assert sum(answered) >= 8 and answered.count(False) >= 6
        await metering_reaches_engine(metering.address, engine_address, before, 60)
    finally:
        hanging.stop()
        metering.stop()


async def test_an_embedding_is_priced_per_input_on_top_of_its_tokens(
    gateway: ServiceProcess, metering: ServiceProcess
) -> None:
    """Last in this module: once a price exists, an unpriced model's requests are refused here."""
    row = f"{{model: {EMBEDDING_NAME}, prompt: '0.02', completion: '0', embedding_input: '0.0001'}}"
    async with metering_client(metering.address) as client:
        reply = await client.import_prices(mpb.ImportPricesRequest(content=f"currency: USD\nprices:\n  - {row}\n"))
    price = from_message(reply.prices[0])
    before = await metering_totals(metering.address)
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(
            f"{gateway.address}/v1/embeddings",
            json={"model": UID, "input": TEXTS},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert answer.status_code == 200, answer.text
    tokens = answer.json()["usage"]["prompt_tokens"]
    await wait_for(metered_since(metering, before, tokens, 1), 30, "metering to hold the priced embedding")
    totals = await metering_totals(metering.address)
    # Three inputs at 100 micro-units each, beside its tokens at 20,000 per million (rounded once).
    assert totals.cost_micro - before.cost_micro == event_cost(tokens, 0, 0, price, embedding_inputs=3)
    assert event_cost(tokens, 0, 0, price, embedding_inputs=3) == (tokens * 20_000 + 500_000) // 1_000_000 + 300
