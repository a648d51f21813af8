"""GenerateMany against the real engine: many requests on one stream, each what its own Generate call
would be (same tokens, same usage, same status), with the updates of one engine step in one message."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc

from services.contracts.channel import CHANNEL_OPTIONS
from services.contracts.engine_client import EngineClient
from tests.calls import request, token_ids_of
from tests.credentials import TESTER_TOKEN, engine_client
from tests.stack import wait_idle

METADATA = (("authorization", f"Bearer {TESTER_TOKEN}"),)


def start(req: pb.GenerateRequest) -> pb.GenerateManyRequest:
    return pb.GenerateManyRequest(start=pb.GenerateStart(request=req))


async def run_stream(address: str, messages: list[pb.GenerateManyRequest], cancel_after: dict[str, int] | None = None):
    """Sends `messages` on one GenerateMany call, then half-closes once every request has ended; cancels a
    request after it got that many updates. Returns (responses, updates by id, ends by id)."""
    cancel_after = dict(cancel_after or {})
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call = engine_pb2_grpc.EngineServiceStub(channel).GenerateMany(metadata=METADATA, timeout=120)
        for message in messages:
            await call.write(message)
        expected = {m.start.request.request_id for m in messages if m.HasField("start")}
        responses: list[pb.GenerateManyResponse] = []
        updates: dict[str, list[pb.GenerateResponse]] = {}
        ends: dict[str, pb.GenerateEnd] = {}
        while (response := await call.read()) is not grpc.aio.EOF:
            responses.append(response)
            for update in response.updates:
                updates.setdefault(update.request_id, []).append(update)
                if cancel_after.get(update.request_id) == len(updates[update.request_id]):
                    await call.write(pb.GenerateManyRequest(cancel=update.request_id))
            for end in response.ends:
                ends[end.request_id] = end
            if set(ends) >= expected:
                await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    return responses, updates, ends


async def test_each_request_is_its_own_generate_and_a_step_is_one_message(engine_address: str) -> None:
    requests = [request(max_tokens=8, ignore_eos=True) for _ in range(4)]
    async with engine_client(engine_address) as engine:
        alone = await engine.generate_all(
            pb.GenerateRequest(**{**_fields(requests[0]), "request_id": "alone-" + uuid.uuid4().hex[:6]})
        )
    responses, updates, ends = await run_stream(engine_address, [start(r) for r in requests])

    for r in requests:
        mine = updates[r.request_id]
        assert ends[r.request_id].code == grpc.StatusCode.OK.value[0]
        assert mine[-1].finished and mine[-1].usage.completion_tokens == 8
        assert mine[-1].usage.prompt_tokens == alone[-1].usage.prompt_tokens
        # Greedy: the same tokens as the same request on its own call.
        assert token_ids_of(mine) == token_ids_of(alone)
    # Four streams decoded together: their updates share messages (one per engine step, not one per token).
    assert max(len(r.updates) for r in responses) >= 2
    assert len(responses) < sum(len(u) for u in updates.values())


async def test_errors_cancels_and_duplicates_end_only_their_own_request(engine_address: str) -> None:
    ok, cut, unknown = (
        request(max_tokens=24, ignore_eos=True),
        request(max_tokens=2000, ignore_eos=True),
        request(max_tokens=4),
    )
    unknown.model = "no-such-model"
    responses, updates, ends = await run_stream(
        engine_address,
        [start(ok), start(cut), start(cut), start(unknown)],
        cancel_after={cut.request_id: 3},
    )
    assert ends[ok.request_id].code == 0 and updates[ok.request_id][-1].usage.completion_tokens == 24
    assert ends[unknown.request_id].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no-such-model" in ends[unknown.request_id].message
    # The second start of an open id is refused; the cancel then ends the first as CANCELLED.
    codes = [e.code for r in responses for e in r.ends if e.request_id == cut.request_id]
    assert grpc.StatusCode.INVALID_ARGUMENT.value[0] in codes and grpc.StatusCode.CANCELLED.value[0] in codes
    assert sum(len(c.token_ids) for u in updates[cut.request_id] for c in u.choices) < 2000
    load = await wait_idle(engine_address)
    assert load.unfinished_requests == 0 and load.open_streams == 0


async def test_the_client_library_and_a_dropped_stream(engine_address: str) -> None:
    """EngineClient(multiplexed=True) reads like Generate calls; closing it (the stream gone) aborts in the engine."""
    async with EngineClient(engine_address, TESTER_TOKEN, multiplexed=True) as engine:
        finished = await asyncio.gather(*(engine.generate_all(request(max_tokens=6)) for _ in range(3)))
        assert all(m[-1].finished and m[-1].usage.completion_tokens <= 6 for m in finished)
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await engine.generate_all(request(max_tokens=1500, ignore_eos=True), timeout=0.5)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        long = engine.generate(request(max_tokens=1500, ignore_eos=True))
        await long.read()
    load = await wait_idle(engine_address)
    assert load.unfinished_requests == 0 and load.open_streams == 0


def _fields(message: pb.GenerateRequest) -> dict:
    return {f.name: v for f, v in message.ListFields()}
