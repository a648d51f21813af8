"""GenerateMany's admission: a stream carries at most its bound of open requests; one more ends at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from llmserve.engine.v1 import engine_pb2 as pb

from services.engine.generate_many import generate_many


async def test_a_request_beyond_the_streams_bound_ends_at_once_and_the_others_run() -> None:
    release = asyncio.Event()

    async def held() -> AsyncIterator[str]:
        await release.wait()
        yield "done"

    def fill(response: pb.GenerateResponse, request_id: str, update: str) -> pb.GenerateResponse:
        response.request_id = request_id
        return response

    async def requests() -> AsyncIterator[pb.GenerateManyRequest]:
        for i in range(3):
            yield pb.GenerateManyRequest(start=pb.GenerateStart(request=pb.GenerateRequest(request_id=f"r{i}")))
        await release.wait()

    ends: dict[str, int] = {}
    updated: list[str] = []
    async with asyncio.timeout(10):
        async for batch in generate_many(lambda r: (r.request_id, held()), fill, {}, requests(), max_open=2):
            updated += [u.request_id for u in batch.updates]
            ends |= {end.request_id: end.code for end in batch.ends}
            if "r2" in ends:
                release.set()
    assert ends == {"r2": grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "r0": 0, "r1": 0}
    assert sorted(updated) == ["r0", "r1"]
