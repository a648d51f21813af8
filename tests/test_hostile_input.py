"""Hostile input against the real processes (issue 18's probe, as tests): errors that quote a huge
request stay client errors (never a retried 429), a non-streamed request whose client left is aborted
and billed for what it produced, metering refuses out-of-range usage and its reports keep answering
(with a fuzz of RecordUsage's fields), and connections that send nothing, or send it a byte at a time,
are closed."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmserve.metering.v1 import metering_pb2 as mpb

from tests.calls import event
from tests.credentials import metering_client
from tests.stack import (
    API_KEY,
    MODEL,
    engine_served,
    metering_totals,
    start_gateway,
    start_metering,
    wait_for,
    wait_idle,
)
from tools.processes import ServiceProcess

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


async def test_errors_quoting_a_huge_request_stay_client_errors(gateway_url: str) -> None:
    """Before: the engine's error text passed the gateway's 16 KiB metadata limit and came back 429."""
    async with httpx.AsyncClient(base_url=gateway_url, headers=HEADERS, timeout=60) as http:
        long_model = await http.post("/v1/chat/completions", json={**CHAT, "model": "m" * 20_000})
        assert long_model.status_code == 404, long_model.text
        many_ids = await http.post(
            "/v1/chat/completions", json={**CHAT, "stop_token_ids": [10**6 + i for i in range(3000)]}
        )
        assert many_ids.status_code == 400, many_ids.text
        schema = {"type": "object", "properties": {f"p{i}": {"type": "nonsense-type"} for i in range(1200)}}
        bad_schema = await http.post(
            "/v1/chat/completions",
            json={**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}},
        )
        assert bad_schema.status_code == 400, bad_schema.text
        tokenize = await http.post("/tokenize", json={"model": "m" * 20_000, "prompt": "hi"})
        assert tokenize.status_code == 404
        for reply in (long_model, many_ids, bad_schema, tokenize):
            assert reply.json()["error"]["type"] == "invalid_request_error"
            assert len(reply.json()["error"]["message"]) < 2200
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_a_non_streamed_request_whose_client_left_is_aborted_and_billed_for_what_it_made(
    log_dir: Path, tmp_path: Path, engine_address: str
) -> None:
    """Before: it ran to its 400 tokens and was billed in full, as if the client had read it."""
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path / "m", None, "metering-left")
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-left",
        metering_addr=metering.address,
        data_dir=str(tmp_path / "g"),
    )
    try:
        await wait_idle(engine_address)
        before = await engine_served(engine_address)
        body = {**CHAT, "max_tokens": 400, "ignore_eos": True}
        async with httpx.AsyncClient(headers=HEADERS, timeout=1.5) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(f"{gateway.address}/v1/chat/completions", json=body)

        async def billed() -> bool:
            return (await metering_totals(metering.address)).requests == 1

        await wait_for(billed, 30, "the abandoned request's usage")
        await wait_idle(engine_address)
        after = await engine_served(engine_address)
        totals = await metering_totals(metering.address)
        assert totals.aborted_requests == 1
        # The engine stopped generating once the client left.
        assert 0 < totals.completion_tokens < 400
        assert (totals.prompt_tokens, totals.completion_tokens) == (after[0] - before[0], after[1] - before[1])
    finally:
        gateway.stop()
        metering.stop()


@pytest.fixture(scope="module")
def metering(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = start_metering(log_dir, tmp_path_factory.mktemp("metering-fuzz"), None, "metering-fuzz")
    yield process
    process.stop()


async def test_usage_events_out_of_range_are_rejected_and_reports_keep_answering(metering: ServiceProcess) -> None:
    """Before: two events of 2^63-1 tokens made every report covering them answer INTERNAL."""
    async with metering_client(metering.address) as client:
        before = (await client.counters()).all
        huge = [
            event(900_000 + i, source="hostile", prompt_tokens=2**63 - 1, completion_tokens=2**63 - 1) for i in range(2)
        ]
        acks = await client.record([*huge, event(900_010, source="hostile")])
        assert [a.status for a in acks] == [mpb.ACK_STATUS_REJECTED] * 2 + [mpb.ACK_STATUS_RECORDED]
        assert "above the bound" in acks[0].reason
        rows = await client.totals(mpb.GetTotalsRequest(group_by_model=True))
        assert sum(r.totals.requests for r in rows) == before.requests + 1
        assert await client.series(mpb.GetUsageSeriesRequest(bucket=mpb.BUCKET_MINUTE))
        assert (await client.counters()).all.requests == before.requests + 1


_TOKENS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 5000))
_SECONDS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 100))
_TEXT = st.one_of(st.text(max_size=40), st.text(min_size=1000, max_size=1100))
_FUZZED = st.fixed_dictionaries(
    {
        "prompt_tokens": _TOKENS,
        "completion_tokens": _TOKENS,
        "cached_tokens": _TOKENS,
        "time_to_first_token_seconds": _SECONDS,
        "generation_seconds": _SECONDS,
        "request_seconds": _SECONDS,
        "model": _TEXT,
        "api_key_id": _TEXT,
        "finish_reason": _TEXT,
        "trace_id": _TEXT,
        "model_name": _TEXT,
        "status": st.sampled_from([mpb.REQUEST_STATUS_OK, mpb.REQUEST_STATUS_ABORT, mpb.REQUEST_STATUS_ERROR, 0, 7]),
    }
)
_sequence = iter(range(10**9))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_FUZZED, min_size=1, max_size=8))
def test_fuzzed_usage_fields_never_fail_the_server_and_totals_stay_the_sum_of_what_it_recorded(
    metering: ServiceProcess, batch: list[dict]
) -> None:
    asyncio.run(_record_fuzzed(metering, batch))


async def _record_fuzzed(metering: ServiceProcess, batch: list[dict]) -> None:
    events = [event(next(_sequence), source="fuzz", **fields) for fields in batch]
    async with metering_client(metering.address) as client:
        before = await _fuzz_totals(client)
        try:
            acks = await client.record(events)
        except grpc.aio.AioRpcError as error:
            # Every event refused: the batch is a client error, never a server one.
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            acks = []
        recorded = [e for e, a in zip(events, acks) if a.status == mpb.ACK_STATUS_RECORDED]
        after = await _fuzz_totals(client)
    assert metering.proc.poll() is None
    assert after == (
        before[0] + len(recorded),
        before[1] + sum(e.prompt_tokens for e in recorded),
        before[2] + sum(e.completion_tokens for e in recorded),
    )


async def _fuzz_totals(client) -> tuple[int, int, int]:
    rows = await client.totals(mpb.GetTotalsRequest(group_by_api_key=True))
    totals = [r.totals for r in rows]
    return (
        sum(t.requests for t in totals),
        sum(t.prompt_tokens for t in totals),
        sum(t.completion_tokens for t in totals),
    )


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def test_idle_and_trickling_connections_are_closed(log_dir: Path, tmp_path: Path, engine_address: str) -> None:
    """Before: 300 idle and 50 half-sent-header connections were all still open after 130 s."""
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-conns",
        data_dir=str(tmp_path / "g"),
        header_timeout_seconds="1",
        keep_alive_seconds="1",
    )
    try:
        host, port = gateway.address.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(50)]
        trickle = socket.create_connection((host, int(port)))
        started = time.monotonic()
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
            if time.monotonic() - started > 3:
                break
            try:
                trickle.send(bytes([byte]))
            except OSError:
                break
            await asyncio.sleep(0.3)
        closed = [await asyncio.to_thread(_closed_within, s, 3) for s in [trickle, *idle]]
        assert all(closed), f"{closed.count(False)} of {len(closed)} still open"
        for s in [trickle, *idle]:
            s.close()
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{gateway.address}/health")).status_code == 200
    finally:
        gateway.stop()
