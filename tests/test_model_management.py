"""Model management in Xinference's terms, against the real engine and gateway processes, driven by
PyPI's `xinference-client` unchanged and by the openai SDK: registrations, launching the tiny model next
to the embedded one at run time, chatting to both, terminating (streams in flight end with their usage
chunk and [DONE]; the uid then answers 404), failed launches, and a gateway restart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from llmserve.metering.v1 import metering_pb2 as mpb
from prometheus_client.parser import text_string_to_metric_families
from xinference_client import RESTfulClient

from services.contracts.builtin_models import CROSS_ENCODER_NAME, EMBEDDED_MODEL_NAME, EMBEDDING_NAME, TINY_NAME
from services.engine.builtin_models import make_tiny_model
from services.engine.prepare_model import ensure_embedded_model
from tests.credentials import metering_client
from tests.stack import (
    ADMIN_API_KEY,
    ADMIN_HEADERS,
    API_KEY,
    start_gateway,
    start_metering,
    wait_for,
    wait_until,
)
from tools.processes import MODEL_STORE, ServiceProcess

TINY_UID = "tiny-1"
CUSTOM = "my-tiny"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-models")


@pytest.fixture(scope="module")
def gateway(log_dir: Path, engine_address: str, data_dir: Path) -> Iterator[ServiceProcess]:
    process = start_gateway(log_dir, engine_address, name="gateway-models", data_dir=str(data_dir))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def xinference(gateway: ServiceProcess) -> RESTfulClient:
    return RESTfulClient(gateway.address, api_key=ADMIN_API_KEY)


def chat(url: str, model: str, max_tokens: int = 4) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=max_tokens
    )


def vllm_requests_by_model(metrics_url: str) -> dict[str, float]:
    """vLLM's finished-request counter by model from the engine's metrics port; every series once."""
    seen: set[tuple] = set()
    finished: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(metrics_url).text):
        for sample in family.samples:
            series = (sample.name, tuple(sorted(sample.labels.items())))
            assert series not in seen, f"{series} is exposed twice"
            seen.add(series)
            if sample.name == "vllm:request_success_total":
                model = sample.labels["model_name"]
                finished[model] = finished.get(model, 0.0) + sample.value
    return finished


def test_registrations_list_and_describe(xinference: RESTfulClient) -> None:
    names = {r["model_name"]: r["is_builtin"] for r in xinference.list_model_registrations("LLM")}
    assert names[EMBEDDED_MODEL_NAME] is True and names[TINY_NAME] is True
    spec = xinference.get_model_registration("LLM", TINY_NAME)
    assert spec["model_name"] == TINY_NAME and "chat" in spec["model_ability"]
    embedding = xinference.list_model_registrations("embedding")
    assert embedding == [{"model_name": EMBEDDING_NAME, "is_builtin": True}]
    assert xinference.get_model_registration("embedding", EMBEDDING_NAME)["dimensions"] == 384
    rerank = xinference.list_model_registrations("rerank")
    assert rerank == [{"model_name": CROSS_ENCODER_NAME, "is_builtin": True}]
    assert xinference.get_model_registration("rerank", CROSS_ENCODER_NAME)["max_tokens"] == 512
    with pytest.raises(RuntimeError, match="LLM, embedding, rerank models"):
        xinference.register_model("image", json.dumps({"model_name": "r"}), persist=True)
    with pytest.raises(RuntimeError, match="model_uri"):
        xinference.register_model("rerank", json.dumps({"model_name": "r"}), persist=True)
    with pytest.raises(RuntimeError, match="model_uri"):
        xinference.register_model("embedding", json.dumps({"model_name": "e"}), persist=True)


def test_launch_chat_generate_and_terminate_with_the_xinference_client(
    xinference: RESTfulClient, gateway: ServiceProcess, engine_process: ServiceProcess
) -> None:
    uid = xinference.launch_model(TINY_NAME, model_uid=TINY_UID)
    assert uid == TINY_UID
    running = xinference.list_models()
    assert {TINY_UID, EMBEDDED_MODEL_NAME} <= set(running)
    assert running[TINY_UID]["model_name"] == TINY_NAME
    description = xinference.describe_model(TINY_UID)
    assert description["model_type"] == "LLM" and "chat" in description["model_ability"]

    handle = xinference.get_model(TINY_UID)
    reply = handle.chat(messages=[{"role": "user", "content": "Hi"}], generate_config={"max_tokens": 3})
    assert reply["model"] == TINY_UID and 1 <= reply["usage"]["completion_tokens"] <= 3
    completion = handle.generate("Once upon", generate_config={"max_tokens": 3})
    assert completion["usage"]["prompt_tokens"] > 0
    chunks = list(
        handle.chat(messages=[{"role": "user", "content": "Hi"}], generate_config={"max_tokens": 3, "stream": True})
    )
    assert chunks[-1]["usage"]["completion_tokens"] >= 1

    # Both models answer through the OpenAI SDK, each under its own name.
    assert chat(gateway.address, TINY_UID).model == TINY_UID
    assert chat(gateway.address, EMBEDDED_MODEL_NAME).model == EMBEDDED_MODEL_NAME
    openai_ids = [m.id for m in openai.OpenAI(base_url=f"{gateway.address}/v1", api_key=API_KEY).models.list()]
    assert TINY_UID in openai_ids
    # vLLM's own metrics cover both models, the launched one included (counted as vLLM's output
    # handler records each step, so shortly after the replies).
    wait_until(
        lambda: vllm_requests_by_model(engine_process.metrics_url).get(TINY_UID, 0) >= 4,
        10,
        "vLLM's metrics to count the launched model's 4 finished requests",
    )
    assert vllm_requests_by_model(engine_process.metrics_url)[EMBEDDED_MODEL_NAME] >= 1

    xinference.terminate_model(TINY_UID)
    assert TINY_UID not in xinference.list_models()
    assert TINY_UID not in vllm_requests_by_model(engine_process.metrics_url)
    with pytest.raises(openai.NotFoundError) as gone:
        chat(gateway.address, TINY_UID)
    assert gone.value.body["code"] == "model_not_found"
    # The other model kept serving.
    assert chat(gateway.address, EMBEDDED_MODEL_NAME).usage.completion_tokens >= 1


def test_custom_registration_launches_and_survives_a_gateway_restart(
    xinference: RESTfulClient, gateway: ServiceProcess, log_dir: Path, engine_address: str, data_dir: Path
) -> None:
    tiny = make_tiny_model(ensure_embedded_model(MODEL_STORE), MODEL_STORE)
    spec = {
        "model_name": CUSTOM,
        "model_ability": ["generate", "chat"],
        "context_length": 2048,
        "model_specs": [{"model_uri": f"file://{tiny.resolve()}"}],
        "engine_args": {"load_format": "dummy"},
    }
    xinference.register_model("LLM", json.dumps(spec), persist=True)
    assert CUSTOM in {r["model_name"] for r in xinference.list_model_registrations("LLM")}
    uid = xinference.launch_model(CUSTOM)
    try:
        assert uid == CUSTOM and chat(gateway.address, CUSTOM).usage.completion_tokens >= 1
        # Another gateway process on the same data folder (as after a restart) knows both.
        again = start_gateway(log_dir, engine_address, name="gateway-models-2", data_dir=str(data_dir))
        try:
            other = RESTfulClient(again.address, api_key=ADMIN_API_KEY)
            assert CUSTOM in {r["model_name"] for r in other.list_model_registrations("LLM")}
            assert other.list_models()[CUSTOM]["model_name"] == CUSTOM
        finally:
            again.stop()
    finally:
        xinference.terminate_model(CUSTOM)
    xinference.unregister_model("LLM", CUSTOM)
    assert CUSTOM not in {r["model_name"] for r in xinference.list_model_registrations("LLM")}


def test_failed_launches_answer_clearly_and_leave_the_others_serving(
    xinference: RESTfulClient, gateway: ServiceProcess
) -> None:
    with pytest.raises(RuntimeError, match="No registered model"):
        xinference.launch_model("no-such-model")
    xinference.register_model(
        "LLM",
        json.dumps(
            {
                "model_name": "broken",
                "model_specs": [{"model_uri": "/nonexistent/folder"}],
            }
        ),
        persist=True,
    )
    try:
        with pytest.raises(RuntimeError, match="not a Hugging Face model folder"):
            xinference.launch_model("broken")
    finally:
        xinference.unregister_model("LLM", "broken")
    with pytest.raises(RuntimeError, match="not a vLLM engine argument"):
        xinference.launch_model(TINY_NAME, model_uid="tiny-bad-arg", no_such_vllm_argument=1)
    with pytest.raises(RuntimeError, match="unknown tool_call_parser `nope`; vLLM has: .*hermes"):
        xinference.launch_model(TINY_NAME, model_uid="tiny-bad-parser", tool_call_parser="nope")
    with pytest.raises(RuntimeError, match="already running"):
        xinference.launch_model(TINY_NAME, model_uid=EMBEDDED_MODEL_NAME)
    assert set(xinference.list_models()) == {EMBEDDED_MODEL_NAME}
    assert chat(gateway.address, EMBEDDED_MODEL_NAME).usage.completion_tokens >= 1


async def stream_until_terminated(gateway: str, xinference: RESTfulClient, uid: str) -> dict:
    """Streams from `uid`, terminates it after the first content chunk, reads to the end; returns the
    usage chunk, after checking the stream ended with it and [DONE]."""
    body = {
        "model": uid,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status_code == 200
            stream = response.aiter_lines()
            while not any(line.startswith("data: {") and '"content"' in line for line in lines):
                lines.append(await anext(stream))
            terminated = asyncio.create_task(asyncio.to_thread(xinference.terminate_model, uid))
            lines += [line async for line in stream]
            await terminated
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert 1 <= usage["completion_tokens"] < 1500
    return usage


async def test_terminating_a_model_ends_its_streams_with_usage_and_done(
    xinference: RESTfulClient, gateway: ServiceProcess
) -> None:
    await asyncio.to_thread(xinference.launch_model, TINY_NAME, model_uid=TINY_UID)
    await stream_until_terminated(gateway.address, xinference, TINY_UID)
    assert TINY_UID not in xinference.list_models()


def test_management_needs_an_admin_key_and_xinference_learns_to_send_one(gateway: ServiceProcess) -> None:
    assert httpx.get(f"{gateway.address}/v1/cluster/auth").json() == {"auth": True}
    user = {"Authorization": f"Bearer {API_KEY}"}
    refused = httpx.post(f"{gateway.address}/v1/models", json={"model_name": TINY_NAME}, headers=user)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    assert httpx.delete(f"{gateway.address}/v1/models/{EMBEDDED_MODEL_NAME}", headers=user).status_code == 403
    assert httpx.get(f"{gateway.address}/v1/model_registrations/LLM", headers=user).status_code == 200
    assert httpx.get(f"{gateway.address}/v1/model_registrations/LLM").status_code == 401
    missing = httpx.delete(f"{gateway.address}/v1/models/not-running", headers=ADMIN_HEADERS)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_the_cli_mirrors_xinference_verbs(gateway: ServiceProcess) -> None:
    def cli(*args: str) -> str:
        command = [
            sys.executable,
            "-m",
            "services.gateway.fleet",
            "-e",
            gateway.address,
            "--api-key",
            ADMIN_API_KEY,
            *args,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert TINY_NAME in cli("registrations")
    assert cli("launch", "-n", TINY_NAME, "-u", "tiny-cli", "--engine-arg", "max_model_len=512").strip() == "tiny-cli"
    listed = cli("list")
    assert "tiny-cli" in listed and "512" in listed
    assert "terminated tiny-cli" in cli("terminate", "-u", "tiny-cli")
    assert "tiny-cli" not in cli("list")
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.gateway.fleet",
            "-e",
            gateway.address,
            "--api-key",
            API_KEY,
            "terminate",
            "-u",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and "403" in refused.stderr


async def test_usage_is_metered_under_the_uid_and_the_registered_name(
    log_dir: Path, engine_address: str, tmp_path: Path
) -> None:
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-models")
    billed = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-models-billing",
        data_dir=str(tmp_path / "g"),
        metering_addr=metering.address,
    )
    xinference = RESTfulClient(billed.address, api_key=ADMIN_API_KEY)
    try:
        await asyncio.to_thread(xinference.launch_model, TINY_NAME, model_uid="tiny-billed")
        replies = [await asyncio.to_thread(chat, billed.address, "tiny-billed") for _ in range(2)]
        # The model is terminated under a third request's stream: that one is billed as well.
        cut = await stream_until_terminated(billed.address, xinference, "tiny-billed")
        completion = sum(r.usage.completion_tokens for r in replies) + cut["completion_tokens"]

        async def totals(**query: str) -> list:
            async with metering_client(metering.address) as client:
                return await client.totals(mpb.GetTotalsRequest(**query))

        async def metered() -> bool:
            rows = await totals(model_name=TINY_NAME)
            return bool(rows) and rows[0].totals.requests == 3

        await wait_for(metered, 30, "metering to hold the three requests")
        by_uid = await totals(model="tiny-billed")
        assert by_uid[0].totals.completion_tokens == completion
        grouped = await totals(group_by_model=True, group_by_model_name=True)
        assert ("tiny-billed", TINY_NAME, completion) in [
            (r.model, r.model_name, r.totals.completion_tokens) for r in grouped
        ]
    finally:
        billed.stop()
        metering.stop()
