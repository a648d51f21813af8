"""POST /v1/embeddings, in OpenAI's shape: one vector per input from an engine model that runs vLLM's
pooling runner, with exact prompt-token usage recorded like any request's (zero completion tokens)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from array import array
from collections.abc import Sequence

import grpc
import orjson
from fastapi import APIRouter, Request, Response
from llmserve.engine.v1 import engine_pb2 as pb

from services.contracts.engine_client import EngineClient
from services.gateway.dependencies import Fleet, Generations, KeyId, KeyLimits, Metrics, Record, Settings
from services.gateway.errors import ApiError, from_grpc
from services.gateway.limits.admission import embedding_tokens
from services.gateway.openai_api.schemas import EmbeddingRequest
from services.gateway.outcome import Outcome
from services.gateway.usage.recorder import OutcomeRecorder

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")
# Refused before the engine counted anything: nothing is held.
_REFUSED = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED,
                      grpc.StatusCode.PERMISSION_DENIED})


def _encode(values: Sequence[float], encoding: str) -> list[float] | str:
    """float: the numbers; base64: little-endian float32 bytes, as OpenAI sends them."""
    if encoding == "float":
        return list(values)
    return base64.b64encode(array("f", values).tobytes()).decode()


def _engine_inputs(body: EmbeddingRequest, limit: int) -> list[pb.EmbedInput]:
    try:
        inputs = body.inputs()
    except ValueError as error:
        raise ApiError(400, str(error), param="input") from error
    if len(inputs) > limit:
        raise ApiError(400, f"At most {limit} inputs per request; got {len(inputs)}.", param="input")
    return [
        pb.EmbedInput(text=x) if isinstance(x, str) else pb.EmbedInput(token_ids=pb.TokenIds(ids=x)) for x in inputs
    ]


async def _record_held_usage(
    engine: EngineClient, request: pb.EmbedRequest, outcome: Outcome, recorder: OutcomeRecorder, started: float,
    settle_seconds: float,
) -> None:
    """Asks the engine for the usage it holds for a request whose answer never reached us, and records it:
    a request the engine finished is billed even if its vectors were lost on the way."""
    if not request.caller:
        return
    source = request.caller.rpartition("/")[0]
    deadline = time.monotonic() + settle_seconds
    try:
        while True:
            answer = await engine.claim_usage(source, "", timeout=settle_seconds, request_ids=[request.request_id])
            if not answer.still_open or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    except grpc.aio.AioRpcError as error:
        log.warning("could not ask the engine for the usage of embedding %s: %s", request.request_id, error.code().name)
        return
    for held in answer.usage:
        outcome.model = held.model or outcome.model
        outcome.prompt_tokens = held.usage.prompt_tokens
        outcome.finish_reasons = ["abort"]
        outcome.status = "abort"
        outcome.duration_seconds = time.monotonic() - started
        await recorder.record(outcome)


@router.post("/embeddings", response_model=None)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, fleet: Fleet, recorder: Record, metrics: Metrics, settings: Settings,
    generations: Generations, limits: KeyLimits, key_id: KeyId,
) -> Response:
    request.state.model = body.model
    outcome = Outcome(
        request_id=f"embd-{uuid.uuid4().hex}", endpoint=request.url.path, model=body.model, api_key_id=key_id,
        streamed=False, model_name=fleet.model_name(body.model),
    )
    engine_request = pb.EmbedRequest(
        request_id=outcome.request_id, model=body.model, inputs=_engine_inputs(body, settings.max_prompts_per_request)
    )
    if body.dimensions is not None:
        engine_request.dimensions = body.dimensions
    headers: dict[str, str] = {}
    if limits is not None and limits.limited(key_id):
        headers = await limits.reserve(outcome.request_id, key_id, embedding_tokens(fleet, engine_request))
    if recorder.delivery is not None:
        recorder.delivery.stamp([engine_request], outcome)
    member = fleet.pick(body.model)
    member.outstanding += 1
    started = time.monotonic()
    outcome.engine_request_ids = [outcome.request_id]
    outcome.engine_address = member.address
    try:
        reply = await member.client.embed(engine_request)
    except BaseException as error:
        refused = isinstance(error, grpc.aio.AioRpcError) and error.code() in _REFUSED
        if refused and limits is not None:
            limits.settle(outcome.request_id, 0)
        if not refused:
            # Cut after the engine may have counted it (a deadline, the client gone): it holds the usage for us.
            task = asyncio.create_task(_record_held_usage(
                member.client, engine_request, outcome, recorder, started, settings.settle_timeout_seconds
            ))
            generations.settling.add(task)
            task.add_done_callback(generations.settling.discard)
        if isinstance(error, grpc.aio.AioRpcError):
            raise from_grpc(error) from error
        raise
    finally:
        member.outstanding -= 1
    outcome.model = reply.model or body.model
    outcome.prompt_tokens = reply.usage.prompt_tokens
    outcome.finish_reasons = ["stop"]
    outcome.duration_seconds = time.monotonic() - started
    metrics.known_models.add(outcome.model)
    await recorder.record(outcome)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(e.values, body.encoding_format)}
        for i, e in enumerate(reply.embeddings)
    ]
    usage = {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens}
    return Response(
        orjson.dumps({"object": "list", "data": data, "model": outcome.model, "usage": usage}),
        media_type="application/json",
        headers=headers,
    )
