"""One unary call to an engine's pooling runner (Embed, Score) for one request: its reservation, its usage
recorded before the answer leaves, and, when the answer is lost after the engine may have counted the
request (a deadline, the client gone, a broken connection), the usage the engine holds for it claimed and
recorded in a task of its own."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from services.contracts.pricing import Price
from services.gateway.errors import ApiError
from services.gateway.fleet.engines import EngineMember
from services.gateway.fleet.router import RequestRouter
from services.gateway.limits.keeper import LimitsKeeper
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


class PoolingRequest(Protocol):
    request_id: str
    caller: str
    usage_context: bytes


_Reply = TypeVar("_Reply")


@dataclass
class PoolingCall:
    router: RequestRouter
    recorder: OutcomeRecorder
    generations: OpenGenerations
    limits: LimitsKeeper | None
    settle_seconds: float
    # The price in force for the request's model (its reservation's cost), if any.
    price: Price | None = None

    def limited(self, outcome: Outcome) -> bool:
        """Whether the request's key has limits (so its prompt is reserved first)."""
        return self.limits is not None and self.limits.limited(outcome.api_key_id)

    async def reserve(self, outcome: Outcome, prompt_tokens: int, embedding_inputs: int = 0) -> dict[str, str]:
        """The rate-limit headers once the request's prompt (and its inputs' price) is reserved, or OpenAI's
        429; no headers for a key without limits."""
        if not self.limited(outcome):
            return {}
        assert self.limits is not None
        return await self.limits.reserve(
            outcome.request_id, outcome.api_key_id, prompt_tokens, 0, self.price, embedding_inputs=embedding_inputs
        )

    async def run(
        self,
        model: str,
        request: PoolingRequest,
        outcome: Outcome,
        call: Callable[[EngineMember], Awaitable[_Reply]],
    ) -> _Reply:
        """The engine's reply, its usage (prompt tokens) recorded under `outcome` before it returns."""
        if self.recorder.delivery is not None:
            self.recorder.delivery.stamp([request], outcome)
        started = time.monotonic()
        outcome.engine_request_ids = [request.request_id]
        refused = False

        async def rpc(member: EngineMember) -> _Reply:
            nonlocal refused
            outcome.engine_address = member.address
            try:
                return await call(member)
            except BaseException as error:
                refused = isinstance(error, grpc.aio.AioRpcError) and error.code() in _REFUSED
                if not refused:
                    # Cut after the engine may have counted it: it holds the usage.
                    self._record_held_usage(member, request, outcome, started)
                raise

        try:
            reply = await self.router.call(model, rpc)
        except ApiError:
            if refused and self.limits is not None:
                self.limits.settle(outcome.request_id, 0, 0, 0)
            raise
        outcome.model = reply.model or model
        outcome.prompt_tokens = reply.usage.prompt_tokens
        outcome.finish_reasons = ["stop"]
        outcome.duration_seconds = time.monotonic() - started
        await self.recorder.record(outcome)
        return reply

    def _record_held_usage(
        self, member: EngineMember, request: PoolingRequest, outcome: Outcome, started: float
    ) -> None:
        task = asyncio.create_task(self._held_usage(member, request, outcome, started))
        self.generations.settling.add(task)
        task.add_done_callback(self.generations.settling.discard)

    async def _held_usage(
        self, member: EngineMember, request: PoolingRequest, outcome: Outcome, started: float
    ) -> None:
        """Asks the engine for the usage it holds for a request whose answer never reached us, and records it:
        a request the engine finished is billed even if its answer was lost on the way."""
        if not request.caller:
            return
        try:
            held_usage = await member.client.claim_held(request.caller, [request.request_id], self.settle_seconds)
        except grpc.aio.AioRpcError as error:
            log.warning("could not ask the engine for the usage of %s: %s", request.request_id, error.code().name)
            return
        for held in held_usage:
            outcome.model = held.model or outcome.model
            outcome.engine_address = member.address
            outcome.prompt_tokens = held.usage.prompt_tokens
            outcome.finish_reasons = ["abort"]
            outcome.status = "abort"
            outcome.duration_seconds = time.monotonic() - started
            await self.recorder.record(outcome)
