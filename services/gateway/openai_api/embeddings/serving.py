"""Embeddings in OpenAI's shape: one vector per input from an engine model that runs vLLM's pooling runner,
with exact prompt-token usage recorded like any request's (zero completion tokens)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from llmserve.engine.v1 import engine_pb2 as pb

from services.contracts.pricing import Price
from services.gateway.errors import ApiError
from services.gateway.fleet.engines import EngineMember
from services.gateway.fleet.router import RequestRouter
from services.gateway.limits.admission import embedding_tokens
from services.gateway.limits.keeper import LimitsKeeper
from services.gateway.openai_api.embeddings.protocol import EmbeddingRequest
from services.gateway.outcome import Outcome
from services.gateway.streaming.open_generations import OpenGenerations
from services.gateway.usage.recorder import OutcomeRecorder

log = logging.getLogger(__name__)
# Refused before the engine counted anything: nothing is held.
_REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


def _encode(values: Sequence[float], encoding: str) -> list[float] | str:
    """float: the numbers; base64: little-endian float32 bytes, as OpenAI sends them."""
    if encoding == "float":
        return list(values)
    return base64.b64encode(array("f", values).tobytes()).decode()


def engine_request(body: EmbeddingRequest, request_id: str, limit: int) -> pb.EmbedRequest:
    try:
        inputs = body.inputs()
    except ValueError as error:
        raise ApiError(400, str(error), param="input") from error
    if len(inputs) > limit:
        raise ApiError(400, f"At most {limit} inputs per request; got {len(inputs)}.", param="input")
    request = pb.EmbedRequest(
        request_id=request_id,
        model=body.model,
        inputs=[
            pb.EmbedInput(text=x) if isinstance(x, str) else pb.EmbedInput(token_ids=pb.TokenIds(ids=x)) for x in inputs
        ],
    )
    if body.dimensions is not None:
        request.dimensions = body.dimensions
    return request


@dataclass
class EmbeddingServing:
    router: RequestRouter
    recorder: OutcomeRecorder
    generations: OpenGenerations
    limits: LimitsKeeper | None
    settle_seconds: float
    # The price in force for the request's model (its reservation's cost), if any.
    price: Price | None = None

    async def embed(self, body: EmbeddingRequest, request: pb.EmbedRequest, outcome: Outcome) -> tuple[dict, dict]:
        """(OpenAI's response body, headers); the usage is recorded before it returns."""
        headers: dict[str, str] = {}
        limits = self.limits
        if limits is not None and limits.limited(outcome.api_key_id):
            tokens = embedding_tokens(self.router.fleet, request)
            headers = await limits.reserve(
                outcome.request_id, outcome.api_key_id, tokens, 0, self.price, embedding_inputs=len(request.inputs)
            )
        if self.recorder.delivery is not None:
            self.recorder.delivery.stamp([request], outcome)
        started = time.monotonic()
        outcome.engine_request_ids = [request.request_id]
        refused = False

        async def rpc(member: EngineMember) -> pb.EmbedResponse:
            nonlocal refused
            outcome.engine_address = member.address
            try:
                return await member.client.embed(request)
            except BaseException as error:
                refused = isinstance(error, grpc.aio.AioRpcError) and error.code() in _REFUSED
                if not refused:
                    # Cut after the engine may have counted it (a deadline, the client gone): it holds the usage.
                    self._record_held_usage(member, request, outcome, started)
                raise

        try:
            reply = await self.router.call(body.model, rpc)
        except ApiError:
            if refused and limits is not None:
                limits.settle(outcome.request_id, 0, 0, 0)
            raise
        outcome.model = reply.model or body.model
        outcome.prompt_tokens = reply.usage.prompt_tokens
        outcome.finish_reasons = ["stop"]
        outcome.duration_seconds = time.monotonic() - started
        await self.recorder.record(outcome)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(e.values, body.encoding_format)}
            for i, e in enumerate(reply.embeddings)
        ]
        usage = {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens}
        return {"object": "list", "data": data, "model": outcome.model, "usage": usage}, headers

    def _record_held_usage(
        self, member: EngineMember, request: pb.EmbedRequest, outcome: Outcome, started: float
    ) -> None:
        task = asyncio.create_task(self._held_usage(member, request, outcome, started))
        self.generations.settling.add(task)
        task.add_done_callback(self.generations.settling.discard)

    async def _held_usage(
        self, member: EngineMember, request: pb.EmbedRequest, outcome: Outcome, started: float
    ) -> None:
        """Asks the engine for the usage it holds for a request whose answer never reached us, and records it:
        a request the engine finished is billed even if its vectors were lost on the way."""
        if not request.caller:
            return
        try:
            held_usage = await member.client.claim_held(request.caller, [request.request_id], self.settle_seconds)
        except grpc.aio.AioRpcError as error:
            log.warning(
                "could not ask the engine for the usage of embedding %s: %s", request.request_id, error.code().name
            )
            return
        for held in held_usage:
            outcome.model = held.model or outcome.model
            outcome.engine_address = member.address
            outcome.prompt_tokens = held.usage.prompt_tokens
            outcome.finish_reasons = ["abort"]
            outcome.status = "abort"
            outcome.duration_seconds = time.monotonic() - started
            await self.recorder.record(outcome)
