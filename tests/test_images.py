"""Image inputs end to end, with real processes: the built-in tiny vision-language model launched beside
the embedded one, chats with one and two images (streamed and not) whose usage equals /tokenize's count,
and each bad input answered with an OpenAI-shaped 400."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from llmserve.metering.v1 import metering_pb2 as mpb
from PIL import Image
from xinference_client import RESTfulClient

from services.contracts.builtin_models import EMBEDDED_MODEL_NAME, TINY_VLM_NAME
from services.contracts.pricing import event_cost, from_message
from tests.credentials import metering_client
from tests.otlp_receiver import OtlpReceiver
from tests.stack import ADMIN_API_KEY, API_KEY, start_gateway, start_metering, wait_for
from tools.processes import ServiceProcess

UID = "vlm"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def data_uri(color: tuple[int, int, int], size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def messages(*urls: str) -> list[dict]:
    parts = [{"type": "text", "text": "What is in the picture?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def gateway(log_dir: Path, engine_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = start_gateway(
        log_dir, engine_address, name="gateway-images", data_dir=str(tmp_path_factory.mktemp("gateway-images"))
    )
    xinference = RESTfulClient(process.address, api_key=ADMIN_API_KEY)
    xinference.launch_model(TINY_VLM_NAME, model_uid=UID)
    try:
        yield process
    finally:
        xinference.terminate_model(UID)
        process.stop()


def tokenize_count(gateway: ServiceProcess, chat: list[dict]) -> int:
    reply = httpx.post(f"{gateway.address}/tokenize", json={"model": UID, "messages": chat}, headers=HEADERS)
    assert reply.status_code == 200, reply.text
    return reply.json()["count"]


def test_one_and_two_images_count_their_placeholder_tokens(gateway: ServiceProcess) -> None:
    client = openai.OpenAI(base_url=f"{gateway.address}/v1", api_key=API_KEY)
    one = messages(data_uri((200, 10, 10)))
    reply = client.chat.completions.create(model=UID, messages=one, max_tokens=3)
    assert reply.usage.prompt_tokens == tokenize_count(gateway, one)
    text_only = tokenize_count(
        gateway, [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"}]}]
    )
    assert reply.usage.prompt_tokens > text_only + 4, "the image's placeholder tokens are counted"

    two = messages(data_uri((0, 200, 0)), data_uri((0, 0, 200), (64, 48), "JPEG"))
    chunks = list(client.chat.completions.create(model=UID, messages=two, max_tokens=3, stream=True))
    usage = chunks[-1].usage
    assert usage.prompt_tokens == tokenize_count(gateway, two) > reply.usage.prompt_tokens
    assert usage.completion_tokens >= 1


def test_anthropics_sdk_sends_an_image_block_counted_as_the_chat_is(gateway: ServiceProcess) -> None:
    """Anthropic's image block (base64 source) on /v1/messages: its input tokens are what count_tokens and
    /tokenize give for the same picture sent as a chat image."""
    url = data_uri((30, 160, 60))
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": url.split(",", 1)[1]}}
    content = [{"type": "text", "text": "What is in the picture?"}, block]
    sdk = anthropic.Anthropic(base_url=gateway.address, api_key=API_KEY, max_retries=0)
    message = sdk.messages.create(model=UID, max_tokens=3, messages=[{"role": "user", "content": content}])
    counted = sdk.messages.count_tokens(model=UID, messages=[{"role": "user", "content": content}])
    total = message.usage.input_tokens + message.usage.cache_read_input_tokens
    assert total == counted.input_tokens == tokenize_count(gateway, messages(url))
    with pytest.raises(anthropic.BadRequestError):
        bad = {**block, "source": {**block["source"], "data": "bm90IGFuIGltYWdl"}}
        sdk.messages.create(model=UID, max_tokens=3, messages=[{"role": "user", "content": [bad]}])


def test_the_responses_api_takes_an_input_image_counted_as_the_chat_is(gateway: ServiceProcess) -> None:
    url = data_uri((200, 120, 20))
    content = [{"type": "input_text", "text": "What is in the picture?"}, {"type": "input_image", "image_url": url}]
    client = openai.OpenAI(base_url=f"{gateway.address}/v1", api_key=API_KEY, max_retries=0)
    response = client.responses.create(model=UID, input=[{"role": "user", "content": content}], max_output_tokens=3)
    assert response.usage.input_tokens == tokenize_count(gateway, messages(url))


def test_an_image_tokenized_or_refused_first_is_still_served(gateway: ServiceProcess) -> None:
    """The engine renders images (through vLLM's processor and its cache) before it knows the request
    will run: an image seen only by /tokenize, or by a request refused as too long, is then served, with
    the count /tokenize gave."""
    tokenized = messages(data_uri((77, 33, 11)))
    count = tokenize_count(gateway, tokenized)
    reply = post_chat(gateway, UID, tokenized)
    assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] == count, reply.text

    refused = messages(data_uri((12, 34, 56)))
    assert post_chat(gateway, UID, refused, max_tokens=1_000_000).status_code == 400
    assert post_chat(gateway, UID, refused).status_code == 200


def post_chat(gateway: ServiceProcess, model: str, chat: list[dict], max_tokens: int = 2) -> httpx.Response:
    body = {"model": model, "messages": chat, "max_tokens": max_tokens}
    return httpx.post(f"{gateway.address}/v1/chat/completions", json=body, headers=HEADERS, timeout=60)


@pytest.mark.parametrize(
    ("model", "urls", "words", "param"),
    [
        (UID, ["data:image/png;base64," + base64.b64encode(b"not an image").decode()], "could not be decoded", None),
        (UID, ["data:image/bmp;base64,Qk0="], "unsupported media type", "messages[0].content[1].image_url"),
        (UID, ["data:image/png;base64,%%%"], "does not decode", "messages[0].content[1].image_url"),
        (UID, ["https://example.com/cat.png"], "does not fetch", "messages[0].content[1].image_url"),
        (UID, [data_uri((1, 1, 1))] * 3, "At most 2 image(s)", None),
        (EMBEDDED_MODEL_NAME, [data_uri((1, 1, 1))], "takes no images", None),
    ],
)
def test_bad_image_inputs_get_a_400_that_says_why(
    gateway: ServiceProcess, model: str, urls: list[str], words: str, param: str | None
) -> None:
    reply = post_chat(gateway, model, messages(*urls))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param
    # The server keeps serving.
    assert post_chat(gateway, UID, messages(data_uri((5, 5, 5)))).status_code == 200


async def test_an_image_request_is_traced_metered_and_priced_per_image(
    gateway: ServiceProcess, log_dir: Path, tmp_path: Path, engine_address: str, otlp_receiver: OtlpReceiver
) -> None:
    metering = await asyncio.to_thread(
        start_metering, log_dir, tmp_path / "m", None, "metering-images", otlp_receiver.env("metering")
    )
    # Its tokens per million and each image apart; the gateway starts after, and reads the book at start.
    book = f"currency: EUR\nprices:\n  - {{model: {TINY_VLM_NAME}, prompt: '2', completion: '3', image: '0.0025'}}\n"
    async with metering_client(metering.address) as client:
        (price,) = [from_message(p) for p in (await client.import_prices(mpb.ImportPricesRequest(content=book))).prices]
    traced = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-images-traced",
        True,
        otlp_receiver.env("gateway"),
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g"),
    )
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    try:
        chat = messages(data_uri((9, 90, 180)), data_uri((200, 10, 10)))
        body = {"model": UID, "messages": chat, "max_tokens": 3, "usage": {"include": True}}
        headers = {**HEADERS, "traceparent": f"00-{trace_id}-{parent}-01"}
        async with httpx.AsyncClient(timeout=120) as http:
            reply = await http.post(f"{traced.address}/v1/chat/completions", json=body, headers=headers)
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]

        async def all_spans() -> bool:
            # The gateway's request span ends after the reply, and may be exported after its child spans.
            spans = otlp_receiver.spans(trace_id)
            return {s.service for s in spans} == {"gateway", "engine", "metering"} and any(
                s.service == "gateway" and s.parent_span_id == parent for s in spans
            )

        await wait_for(all_spans, 30, "the request's spans from all three services")
        spans = otlp_receiver.spans(trace_id)
        gateway_span = next(s for s in spans if s.service == "gateway" and s.parent_span_id == parent)
        engine_span = next(s for s in spans if s.service == "engine")
        for span in (gateway_span, engine_span):
            assert span.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]

        async def metered() -> bool:
            async with metering_client(metering.address) as client:
                rows = await client.totals(mpb.GetTotalsRequest(model=UID, group_by_model_name=True))
            return bool(rows) and rows[0].totals.prompt_tokens == usage["prompt_tokens"]

        await wait_for(metered, 30, "metering to hold the image request's prompt tokens")
        async with metering_client(metering.address) as client:
            rows = await client.totals(mpb.GetTotalsRequest(model=UID, group_by_model_name=True))
        assert rows[0].model_name == TINY_VLM_NAME
        # Two images at 2,500 micro-units each, on top of the tokens: in the answer and in the ledger alike.
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        cost = event_cost(usage["prompt_tokens"], cached, usage["completion_tokens"], price, images=2)
        assert usage["cost_details"] == {"currency": "EUR", "micro": cost} and cost > 5000
        assert rows[0].totals.cost_micro == cost
    finally:
        traced.stop()
        metering.stop()
