"""Rerank and score end to end, on the session's engine: the built-in random-weights cross-encoder launched
with PyPI's xinference-client (model_type="rerank") and all-MiniLM-L6-v2 (an embedding model, scored by
cosine as vLLM does). Scores and order against sentence-transformers on the same folders within 1e-4, usage
equal to the tokenizer's counts and to metering, the reservation exact, and vLLM's 400s."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from xinference_client import RESTfulClient

from services.contracts.builtin_models import CROSS_ENCODER_NAME, EMBEDDED_MODEL_NAME, EMBEDDING_NAME
from services.engine.builtin_models import embedding_model_folder
from tests.stack import (
    ADMIN_API_KEY,
    ADMIN_HEADERS,
    API_KEY,
    engine_baseline,
    metering_reaches_engine,
    metering_totals,
    start_gateway,
    start_metering,
    wait_for,
)
from tools.processes import ServiceProcess

RANKER = "ranker"
BI_ENCODER = "minilm-scorer"
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital of France.",
    "The cat sat on the mat.",
    "Berlin is a city in Germany.",
    "France is a country in Europe, and its capital is Paris.",
]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
MAX_DOCUMENTS = 8
RANKED_KEY = "sk-ranked"


@pytest.fixture(scope="module")
def metering(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = start_metering(log_dir, tmp_path_factory.mktemp("metering-rerank"), name="metering-rerank")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(
    log_dir: Path, engine_address: str, metering: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    process = start_gateway(
        log_dir,
        engine_address,
        "gateway-rerank",
        metering_addr=metering.address,
        data_dir=str(tmp_path_factory.mktemp("gateway-rerank")),
        max_score_documents=str(MAX_DOCUMENTS),
        api_keys=f"test-key:{API_KEY},test-admin:{ADMIN_API_KEY},ranked:{RANKED_KEY}",
    )
    xinference = RESTfulClient(process.address, api_key=ADMIN_API_KEY)
    xinference.launch_model(CROSS_ENCODER_NAME, model_type="rerank", model_uid=RANKER)
    xinference.launch_model(EMBEDDING_NAME, model_type="embedding", model_uid=BI_ENCODER)
    try:
        yield process
    finally:
        xinference.terminate_model(RANKER)
        xinference.terminate_model(BI_ENCODER)
        process.stop()


@pytest.fixture(scope="module")
def cross_encoder_folder(gateway: ServiceProcess) -> str:
    """The folder the engine made for the launch (the engine and the tests share the model store)."""
    xinference = RESTfulClient(gateway.address, api_key=ADMIN_API_KEY)
    return xinference.describe_model(RANKER)["root"]


def post(gateway: ServiceProcess, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{gateway.address}{path}", headers=HEADERS, json=body, timeout=60)


def pair_tokens(folder: str, queries: list[str], documents: list[str]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(queries) == 1:
        queries = queries * len(documents)
    return sum(len(tokenizer(q, d)["input_ids"]) for q, d in zip(queries, documents))


def test_rerank_matches_the_cross_encoder_and_its_usage_is_the_pairs_tokens(
    gateway: ServiceProcess, metering: ServiceProcess, cross_encoder_folder: str
) -> None:
    from sentence_transformers import CrossEncoder

    expected = CrossEncoder(cross_encoder_folder, device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    before = asyncio.run(metering_totals(metering.address))
    reply = post(gateway, "/v1/rerank", {"model": RANKER, "query": QUERY, "documents": DOCUMENTS})
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    order = [r["index"] for r in answer["results"]]
    assert order == list(np.argsort(-expected)), (order, expected)
    for result in answer["results"]:
        assert abs(result["relevance_score"] - expected[result["index"]]) < 1e-4
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    tokens = pair_tokens(cross_encoder_folder, [QUERY], DOCUMENTS)
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    async def metered() -> bool:
        totals = await metering_totals(metering.address)
        return (
            totals.prompt_tokens - before.prompt_tokens,
            totals.completion_tokens - before.completion_tokens,
            totals.requests - before.requests,
        ) == (tokens, 0, 1)

    asyncio.run(wait_for(metered, 30, "metering to hold the rerank request's pair tokens"))


def test_xinference_client_reranks_unchanged(gateway: ServiceProcess, cross_encoder_folder: str) -> None:
    xinference = RESTfulClient(gateway.address, api_key=API_KEY)
    assert xinference.describe_model(RANKER)["model_type"] == "rerank"
    full = xinference.get_model(RANKER).rerank(DOCUMENTS, QUERY)
    top = xinference.get_model(RANKER).rerank(DOCUMENTS, QUERY, top_n=2, return_documents=False, return_len=True)
    assert [r["index"] for r in top["results"]] == [r["index"] for r in full["results"]][:2]
    assert all("document" not in r for r in top["results"])
    tokens = pair_tokens(cross_encoder_folder, [QUERY], DOCUMENTS)
    assert top["meta"]["tokens"] == {"input_tokens": tokens, "output_tokens": 0}


def test_score_pairs_on_a_cross_encoder_and_by_cosine_on_an_embedding_model(
    gateway: ServiceProcess, cross_encoder_folder: str
) -> None:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    cross = CrossEncoder(cross_encoder_folder, device="cpu")
    one = post(gateway, "/v1/score", {"model": RANKER, "text_1": QUERY, "text_2": DOCUMENTS[0]}).json()
    assert [d["index"] for d in one["data"]] == [0]
    assert abs(one["data"][0]["score"] - cross.predict([(QUERY, DOCUMENTS[0])])[0]) < 1e-4
    pairwise = post(gateway, "/v1/score", {"model": RANKER, "text_1": DOCUMENTS[:2], "text_2": DOCUMENTS[2:]}).json()
    expected = cross.predict(list(zip(DOCUMENTS[:2], DOCUMENTS[2:])))
    assert np.allclose([d["score"] for d in pairwise["data"]], expected, atol=1e-4)
    assert pairwise["usage"]["prompt_tokens"] == pair_tokens(cross_encoder_folder, DOCUMENTS[:2], DOCUMENTS[2:])

    many = post(gateway, "/v1/score", {"model": BI_ENCODER, "text_1": QUERY, "text_2": DOCUMENTS})
    assert many.status_code == 200, many.text
    vectors = SentenceTransformer(embedding_model_folder(), device="cpu").encode(
        [QUERY, *DOCUMENTS], normalize_embeddings=True
    )
    cosines = vectors[1:] @ vectors[0]
    assert np.allclose([d["score"] for d in many.json()["data"]], cosines, atol=1e-4)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedding_model_folder())
    # The query ran once, each document once: that is what is billed (vLLM's own bills the query per document).
    ran = sum(len(tokenizer(t)["input_ids"]) for t in [QUERY, *DOCUMENTS])
    assert many.json()["usage"]["prompt_tokens"] == ran
    reranked = post(gateway, "/v1/rerank", {"model": BI_ENCODER, "query": QUERY, "documents": DOCUMENTS}).json()
    assert [r["index"] for r in reranked["results"]] == list(np.argsort(-cosines))


@pytest.mark.parametrize(
    "path, body, words",
    [
        ("/v1/rerank", {"query": QUERY, "documents": ["d"] * (MAX_DOCUMENTS + 1)}, f"At most {MAX_DOCUMENTS}"),
        ("/v1/rerank", {"query": "", "documents": DOCUMENTS}, "query is empty"),
        ("/v1/rerank", {"query": QUERY, "documents": []}, "at least one document"),
        ("/v1/rerank", {"query": QUERY, "documents": ["ok", ""]}, "document 1 is empty"),
        ("/v1/rerank", {"query": QUERY, "documents": [" ".join(["word"] * 600)]}, "at most 512"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "truncate_prompt_tokens": 0}, "positive"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "max_chunks_per_doc": 2}, "chunks"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "model": EMBEDDED_MODEL_NAME}, "generates text"),
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "one per text_2"),
        ("/v1/score", {"text_1": [], "text_2": ["c"]}, "at least one"),
        ("/v1/embeddings", {"input": "hi"}, "does not embed"),
    ],
)
def test_bad_requests_are_400s_and_the_engine_keeps_serving(
    gateway: ServiceProcess, path: str, body: dict, words: str
) -> None:
    reply = post(gateway, path, {"model": RANKER, **body})
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]["message"]
    assert post(gateway, "/v1/score", {"model": RANKER, "text_1": "a", "text_2": "b"}).status_code == 200


def test_a_token_budget_reserves_the_exact_pair_tokens(gateway: ServiceProcess, cross_encoder_folder: str) -> None:
    """A budget of one rerank and a half: the first is let through (a reservation of each pair at the model's
    length, 4 x 512, would not fit), the second is refused, and the spend is the pairs' tokens."""
    tokens = pair_tokens(cross_encoder_folder, [QUERY], DOCUMENTS)
    budget = tokens + tokens // 2
    reply = httpx.put(f"{gateway.address}/v1/limits/ranked", json={"token_budget": budget}, headers=ADMIN_HEADERS)
    assert reply.status_code == 200, reply.text
    ranked = {"Authorization": f"Bearer {RANKED_KEY}"}
    body = {"model": RANKER, "query": QUERY, "documents": DOCUMENTS}
    first = httpx.post(f"{gateway.address}/v1/rerank", headers=ranked, json=body, timeout=60)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-budget-tokens"] == str(budget)
    second = httpx.post(f"{gateway.address}/v1/rerank", headers=ranked, json=body, timeout=60)
    assert second.status_code == 429 and second.json()["error"]["code"] == "insufficient_quota"
    standing = httpx.get(f"{gateway.address}/v1/limits", headers=ranked).json()
    assert standing["usage"]["budget_used"] == tokens


def test_truncation_only_when_asked(gateway: ServiceProcess, cross_encoder_folder: str) -> None:
    long = " ".join(["word"] * 600)
    body = {"model": RANKER, "query": QUERY, "documents": [long, "short"], "truncate_prompt_tokens": 64}
    reply = post(gateway, "/v1/rerank", body)
    assert reply.status_code == 200, reply.text
    short = pair_tokens(cross_encoder_folder, [QUERY], ["short"])
    assert reply.json()["usage"]["prompt_tokens"] == 64 + short
    whole = post(gateway, "/v1/score", {"model": RANKER, "text_1": QUERY, "text_2": long, "truncate_prompt_tokens": -1})
    assert whole.json()["usage"]["prompt_tokens"] == 512


async def test_clients_hanging_up_mid_rerank_are_billed_exactly_what_the_engine_counted(
    gateway: ServiceProcess, engine_address: str, log_dir: Path, tmp_path: Path
) -> None:
    """24 reranks of 8 long documents, 18 of them cut by the client 5 ms to 0.3 s after sending: metering ends
    equal to the engine's count."""
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-rerank-hangups")
    hanging = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-rerank-hangups",
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g"),
    )
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * 10)
    body = {"model": RANKER, "query": QUERY, "documents": [f"{i} {text}" for i in range(8)]}
    rng = random.Random(5)
    try:
        before = await engine_baseline(engine_address, metering.address)
        slots = asyncio.Semaphore(4)

        async def one(i: int) -> bool:
            timeout = None if i % 4 == 0 else rng.uniform(0.005, 0.3)
            async with slots, httpx.AsyncClient(timeout=timeout or 120) as http:
                try:
                    reply = await http.post(f"{hanging.address}/v1/rerank", headers=HEADERS, json=body)
                except httpx.TimeoutException:
                    return False
                assert reply.status_code == 200, reply.text
                return True

        answered = await asyncio.gather(*(one(i) for i in range(24)))
        assert sum(answered) >= 6
        await metering_reaches_engine(metering.address, engine_address, before, 60)
    finally:
        await asyncio.to_thread(hanging.stop)
        await asyncio.to_thread(metering.stop)
