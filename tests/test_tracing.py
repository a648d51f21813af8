"""One request is one trace across gateway, engine and metering, received by a real OTLP receiver."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.otlp_receiver import OtlpReceiver
from tests.stack import API_KEY, start_gateway, start_metering, wait_until

MODEL = "SmolLM2-135M-Instruct"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


async def test_one_request_is_one_trace_with_genai_attributes(
    log_dir: Path, tmp_path: Path, engine_address: str, otlp_receiver: OtlpReceiver
) -> None:
    metering = await asyncio.to_thread(
        start_metering, log_dir, tmp_path / "m", None, "metering-traced", otlp_receiver.env("metering")
    )
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-traced",
        True,
        otlp_receiver.env("gateway"),
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g"),
    )
    try:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "temperature": 0.5,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {API_KEY}", "traceparent": f"00-{TRACE_ID}-{PARENT}-01"}
        async with httpx.AsyncClient(timeout=120) as http:
            reply = await http.post(f"{gateway.address}/v1/chat/completions", json=body, headers=headers)
        assert reply.status_code == 200
        response_id = reply.text.split('"id":"', 1)[1].split('"', 1)[0]

        wait_until(lambda: _all_four_exported(otlp_receiver.spans(TRACE_ID)), 30, "all four services' spans")
        spans = otlp_receiver.spans(TRACE_ID)
        by_id = {s.span_id: s for s in spans}

        gateway_server = next(s for s in spans if s.service == "gateway" and s.parent_span_id == PARENT)
        assert gateway_server.attributes["gen_ai.operation.name"] == "chat"
        assert gateway_server.attributes["gen_ai.request.model"] == MODEL
        assert gateway_server.attributes["gen_ai.response.model"] == MODEL
        assert gateway_server.attributes["gen_ai.request.max_tokens"] == 4
        assert gateway_server.attributes["gen_ai.request.temperature"] == 0.5
        assert gateway_server.attributes["gen_ai.response.id"] == response_id
        assert gateway_server.attributes["gen_ai.usage.output_tokens"] == 4
        assert gateway_server.attributes["gen_ai.usage.input_tokens"] > 0
        assert gateway_server.attributes["gen_ai.response.finish_reasons"] == ["length"]

        grpc_client = next(s for s in spans if s.service == "gateway" and s.name.endswith("EngineService/Generate"))
        engine_server = next(s for s in spans if s.service == "engine")
        assert engine_server.parent_span_id == grpc_client.span_id
        assert {"queued", "first_token", "finished"} <= set(engine_server.events)
        assert engine_server.attributes["gen_ai.usage.output_tokens"] == 4
        assert engine_server.attributes["gen_ai.response.id"] == response_id

        ingest = next(s for s in spans if s.service == "metering" and s.name == "metering.ingest_event")
        assert by_id[ingest.parent_span_id] is gateway_server
        assert ingest.links, "linked to the RPC that delivered it"
        assert ingest.attributes["llmserve.usage_event.id"] == response_id
    finally:
        gateway.stop()
        metering.stop()


def _all_four_exported(spans: list) -> bool:
    """The gateway's request span (it ends after the reply, and can be exported after its children), its
    gRPC client span, the engine's span and metering's ingest span."""
    return (
        any(s.service == "gateway" and s.parent_span_id == PARENT for s in spans)
        and any(s.service == "gateway" and s.name.endswith("EngineService/Generate") for s in spans)
        and any(s.service == "engine" for s in spans)
        and any(s.service == "metering" and s.name == "metering.ingest_event" for s in spans)
    )


def test_logs_carry_the_trace_id(log_dir: Path, otlp_receiver: OtlpReceiver) -> None:
    engine_log = (log_dir / "engine.log").read_text(errors="replace")
    assert f"[trace={TRACE_ID}]" in engine_log
