"""Which engine serves a request, for every route that makes one (generate, embed, tokenize, ...): the
least-outstanding healthy replica of its model, counted as outstanding while the call runs; a refusal as
unavailable before the first token (or the answer) takes that engine out of rotation and tries another
replica, and after the first token there is no retry."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.errors import ApiError, from_grpc
from services.gateway.fleet.engines import EngineFleet, EngineMember
from services.gateway.outcome import Outcome, OutcomeSink
from services.gateway.streaming.generation import GapObserver, Generation
from services.gateway.streaming.open_generations import OpenGenerations

T = TypeVar("T")


class RequestRouter:
    def __init__(self, fleet: EngineFleet, generations: OpenGenerations, timeout: float, settle_timeout: float) -> None:
        self._fleet = fleet
        self._generations = generations
        self._timeout = timeout
        self._settle_timeout = settle_timeout

    @property
    def fleet(self) -> EngineFleet:
        return self._fleet

    def model_name(self, uid: str) -> str:
        return self._fleet.model_name(uid)

    async def open(
        self,
        requests: list[pb.GenerateRequest],
        outcome: Outcome,
        sink: OutcomeSink,
        on_gap: GapObserver | None = None,
        on_unbilled: Callable[[], None] | None = None,
    ) -> Generation:
        """The request, started on an engine that serves `outcome.model` (its first message read).
        `on_unbilled` is called once if the request ends with nothing to bill (else `sink` gets it)."""
        model = outcome.model
        tried: list[str] = []
        while True:
            try:
                member = self._fleet.pick(model, exclude=tried)
            except LookupError:
                if on_unbilled is not None:
                    on_unbilled()
                raise
            member.outstanding += 1

            def release(member=member) -> None:
                member.outstanding -= 1

            attempt = dataclasses.replace(outcome)
            if not attempt.model and len(member.cards) == 1:
                # No model named: the engine's only one (its messages say so too, unless none arrives).
                attempt.model = next(iter(member.cards))
            generation = Generation(
                member.client,
                requests,
                # Each attempt its own: a refused attempt's settling must not touch the next one's outcome.
                attempt,
                timeout=self._timeout,
                settle_timeout=self._settle_timeout,
                sink=sink,
                on_gap=on_gap,
                open_generations=self._generations.open,
                on_closed=release,
                on_unbilled=on_unbilled,
            )
            try:
                await generation.start(self._generations.settling)
                return generation
            except ApiError as refused:
                tried.append(member.address)
                if refused.status != 503 or not self._fleet.alternatives(model, tried):
                    raise
                # Tried again elsewhere: this attempt's settling must not end the request's billing.
                generation.on_unbilled = None
                self._fleet.mark_down(member)

    async def call(self, model: str, rpc: Callable[[EngineMember], Awaitable[T]]) -> T:
        """A unary engine call for `model` (embed, tokenize, ...) on the replica the fleet picks; an engine
        that refuses it as unavailable leaves rotation and another replica is tried. An engine's error
        becomes the gateway's (services.gateway.errors)."""
        tried: list[str] = []
        while True:
            member = self._fleet.pick(model, exclude=tried)
            member.outstanding += 1
            try:
                return await rpc(member)
            except grpc.aio.AioRpcError as error:
                tried.append(member.address)
                if error.code() is not grpc.StatusCode.UNAVAILABLE or not self._fleet.alternatives(model, tried):
                    raise from_grpc(error) from error
                self._fleet.mark_down(member)
            finally:
                member.outstanding -= 1
