"""LoRA adapters at run time, on the session's engine: a second SmolLM2 launched with xinference-client and
Xinference's `peft_model_config` (one adapter loaded with it), another adapter loaded and unloaded through
vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter. An adapter is a model in /v1/models with its base
as `parent`; its greedy output differs from the base's and equals vLLM's offline `LLM(enable_lora=True)` with
the same adapter; two keys use it beside the base concurrently and metering holds each under its own name,
exactly; bad folders and ranks are 400s that leave the engine serving."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from llmserve.metering.v1 import metering_pb2 as mpb
from xinference_client import RESTfulClient

from services.contracts.builtin_models import EMBEDDED_MODEL_NAME
from services.engine.builtin_models import make_tiny_model
from services.engine.prepare_model import ensure_embedded_model
from tests.credentials import metering_client
from tests.stack import (
    ADMIN_API_KEY,
    ADMIN_HEADERS,
    API_KEY,
    engine_baseline,
    metering_reaches_engine,
    start_gateway,
    start_metering,
    wait_for,
)
from tools.make_lora_adapter import make_lora_adapter
from tools.processes import MODEL_STORE, ServiceProcess

BASE = "lora-base"
ADAPTER = "adapter-a"
RUNTIME_ADAPTER = "adapter-b"
MAX_RANK = 8
KEYS = {"tenant-a": "sk-tenant-a", "tenant-b": "sk-tenant-b"}
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    base = ensure_embedded_model(MODEL_STORE)
    tiny = make_tiny_model(base, MODEL_STORE)
    return {
        ADAPTER: make_lora_adapter(base, folder / ADAPTER, rank=MAX_RANK, seed=0),
        RUNTIME_ADAPTER: make_lora_adapter(base, folder / RUNTIME_ADAPTER, rank=4, seed=1),
        "rank-16": make_lora_adapter(base, folder / "rank-16", rank=16, seed=2),
        "other-base": make_lora_adapter(tiny, folder / "other-base", rank=4, seed=3, random_base=True),
    }


@pytest.fixture(scope="module")
def metering(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = start_metering(log_dir, tmp_path_factory.mktemp("metering-lora"), name="metering-lora")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(
    log_dir: Path,
    engine_address: str,
    metering: ServiceProcess,
    adapters: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    keys = ",".join(f"{name}:{secret}" for name, secret in KEYS.items())
    process = start_gateway(
        log_dir,
        engine_address,
        "gateway-lora",
        metering_addr=metering.address,
        data_dir=str(tmp_path_factory.mktemp("gateway-lora")),
        api_keys=f"test-key:{API_KEY},test-admin:{ADMIN_API_KEY},{keys}",
    )
    xinference = RESTfulClient(process.address, api_key=ADMIN_API_KEY)
    xinference.launch_model(
        EMBEDDED_MODEL_NAME,
        model_uid=BASE,
        peft_model_config={"lora_list": [{"lora_name": ADAPTER, "local_path": str(adapters[ADAPTER])}]},
        max_lora_rank=MAX_RANK,
        max_loras=2,
        max_model_len=1024,
    )
    try:
        yield process
    finally:
        xinference.terminate_model(BASE)
        process.stop()


def complete(gateway: ServiceProcess, model: str, key: str = API_KEY, max_tokens: int = 12) -> httpx.Response:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(
        f"{gateway.address}/v1/completions", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=120
    )


def offline_greedy(adapter: Path) -> tuple[str, str]:
    """(base text, adapter text) from vLLM's offline LLM with LoRA on, in a process of its own."""
    script = textwrap.dedent(
        f"""
        import json
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
        if __name__ == "__main__":
            llm = LLM(model={str(ensure_embedded_model(MODEL_STORE))!r}, enable_lora=True, max_lora_rank={MAX_RANK},
                      max_model_len=1024, enforce_eager=True, kv_cache_memory_bytes=256 << 20)
            params = SamplingParams(temperature=0, max_tokens=12)
            base = llm.generate([{PROMPT!r}], params)[0].outputs[0].text
            lora = LoRARequest("a", 1, {str(adapter)!r})
            tuned = llm.generate([{PROMPT!r}], params, lora_request=lora)[0].outputs[0].text
            print("RESULT " + json.dumps([base, tuned]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, done.stderr[-3000:]
    base, tuned = json.loads(line.removeprefix("RESULT "))
    return base, tuned


def test_an_adapter_is_a_model_with_its_base_as_parent(gateway: ServiceProcess) -> None:
    models = httpx.get(f"{gateway.address}/v1/models", headers=ADMIN_HEADERS).json()["data"]
    by_id = {m["id"]: m for m in models}
    assert by_id[ADAPTER]["parent"] == BASE and by_id[BASE]["parent"] is None
    assert by_id[ADAPTER]["model_type"] == "LLM"


def test_greedy_output_differs_from_the_base_and_equals_offline_vllm(
    gateway: ServiceProcess, adapters: dict[str, Path]
) -> None:
    base = complete(gateway, BASE).json()["choices"][0]["text"]
    tuned = complete(gateway, ADAPTER).json()["choices"][0]["text"]
    assert base != tuned
    assert offline_greedy(adapters[ADAPTER]) == (base, tuned)


async def test_two_keys_use_adapter_and_base_at_once_and_metering_splits_them_exactly(
    gateway: ServiceProcess, metering: ServiceProcess, engine_address: str
) -> None:
    before = await engine_baseline(engine_address, metering.address)
    async with metering_client(metering.address) as client:
        rows = await client.totals(mpb.GetTotalsRequest(group_by_model=True))
    earlier = {r.model: (r.totals.prompt_tokens, r.totals.completion_tokens) for r in rows}
    plan = [(ADAPTER, "sk-tenant-a"), (BASE, "sk-tenant-b"), (ADAPTER, "sk-tenant-b"), (BASE, "sk-tenant-a")] * 3
    replies = await asyncio.gather(*(asyncio.to_thread(complete, gateway, model, key, 16) for model, key in plan))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    used: dict[str, list[int]] = {ADAPTER: [0, 0], BASE: [0, 0]}
    for (model, _), reply in zip(plan, replies):
        assert reply.json()["model"] == model
        usage = reply.json()["usage"]
        used[model][0] += usage["prompt_tokens"]
        used[model][1] += usage["completion_tokens"]
    await metering_reaches_engine(metering.address, engine_address, before, 60)

    async def split() -> bool:
        async with metering_client(metering.address) as client:
            rows = await client.totals(mpb.GetTotalsRequest(group_by_model=True, group_by_model_name=True))
        got = {
            r.model: (
                r.model_name,
                r.totals.prompt_tokens - earlier.get(r.model, (0, 0))[0],
                r.totals.completion_tokens - earlier.get(r.model, (0, 0))[1],
            )
            for r in rows
        }
        return got.get(ADAPTER) == (EMBEDDED_MODEL_NAME, *used[ADAPTER]) and got.get(BASE) == (
            EMBEDDED_MODEL_NAME,
            *used[BASE],
        )

    await wait_for(split, 30, "metering to hold the adapter's and the base's usage apart")


@pytest.mark.parametrize(
    "adapter, words",
    [
        ("empty", "not a PEFT adapter folder"),
        ("rank-16", "max_lora_rank 8"),
        ("other-base", "was made for another model"),
    ],
)
def test_bad_adapters_are_400s_and_the_engine_keeps_serving(
    gateway: ServiceProcess, adapters: dict[str, Path], tmp_path: Path, adapter: str, words: str
) -> None:
    path = tmp_path if adapter == "empty" else adapters[adapter]
    body = {"lora_name": f"bad-{adapter}", "lora_path": str(path), "base_model": BASE}
    reply = httpx.post(f"{gateway.address}/v1/load_lora_adapter", headers=ADMIN_HEADERS, json=body, timeout=120)
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"]["message"]
    assert complete(gateway, ADAPTER).status_code == 200 and complete(gateway, BASE).status_code == 200
    names = {m["id"] for m in httpx.get(f"{gateway.address}/v1/models", headers=ADMIN_HEADERS).json()["data"]}
    assert f"bad-{adapter}" not in names


def test_load_at_run_time_then_unload_then_404(gateway: ServiceProcess, adapters: dict[str, Path]) -> None:
    body = {"lora_name": RUNTIME_ADAPTER, "lora_path": str(adapters[RUNTIME_ADAPTER]), "base_model": BASE}
    url = gateway.address
    user = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.post(f"{url}/v1/load_lora_adapter", headers=user, json=body).status_code == 403
    loaded = httpx.post(f"{url}/v1/load_lora_adapter", headers=ADMIN_HEADERS, json=body, timeout=120)
    assert loaded.status_code == 200 and RUNTIME_ADAPTER in loaded.text
    again = httpx.post(f"{url}/v1/load_lora_adapter", headers=ADMIN_HEADERS, json=body, timeout=120)
    assert again.status_code == 400, again.text
    # Two adapters and their base in one batch (max_loras=2): each answers with its own weights. (Equality
    # with the same request run alone is not asserted: a batch's float sums may tip a close greedy pick.)
    models = [RUNTIME_ADAPTER, ADAPTER, BASE]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda m: complete(gateway, m), models * 2))
    assert [r.json()["model"] for r in together] == models * 2
    assert len({r.json()["choices"][0]["text"] for r in together[:3]}) == 3
    gone = {"lora_name": RUNTIME_ADAPTER}
    assert httpx.post(f"{url}/v1/unload_lora_adapter", headers=ADMIN_HEADERS, json=gone).status_code == 200
    after = complete(gateway, RUNTIME_ADAPTER)
    assert after.status_code == 404 and after.json()["error"]["code"] == "model_not_found"
    assert httpx.post(f"{url}/v1/unload_lora_adapter", headers=ADMIN_HEADERS, json=gone).status_code == 404
    assert complete(gateway, ADAPTER).status_code == 200


async def test_clients_hanging_up_mid_stream_on_an_adapter_are_billed_exactly(
    gateway: ServiceProcess, metering: ServiceProcess, engine_address: str
) -> None:
    """12 streams on the adapter, 9 of them cut by the client after their first chunk: metering ends equal to
    what the engine counted."""
    before = await engine_baseline(engine_address, metering.address)
    body = {"model": ADAPTER, "prompt": PROMPT, "max_tokens": 48, "ignore_eos": True, "stream": True}

    async def one(i: int) -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            async with http.stream(
                "POST", f"{gateway.address}/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"}, json=body
            ) as reply:
                assert reply.status_code == 200
                async for _ in reply.aiter_lines():
                    if i % 4:
                        return

    await asyncio.gather(*(one(i) for i in range(12)))
    await metering_reaches_engine(metering.address, engine_address, before, 60)
