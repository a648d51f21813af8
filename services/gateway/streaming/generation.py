"""One OpenAI request's engine calls: opens them, follows their cumulative usage, and settles them
when the client goes away (abort in the engine, then wait for the final usage)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc
from llmserve.engine.v1 import engine_pb2 as pb

from services.contracts.engine_client import EngineClient
from services.contracts.generate_call import GenerateCall
from services.contracts.generate_many import MultiplexedCall
from services.contracts.usage_terms import request_status
from services.gateway.errors import ApiError, from_grpc
from services.gateway.outcome import FINISH_REASONS, Outcome, OutcomeSink

log = logging.getLogger(__name__)

GapObserver = Callable[[float, int], None]

_END = None  # queued after a stream's last message


class _Inbox:
    """A stream's messages for its one reader: what asyncio.Queue does for one consumer and no bound,
    without its per-call bookkeeping (a running-loop lookup, a syscall on Python 3.11, per get)."""

    def __init__(self) -> None:
        self._items: deque[pb.GenerateResponse | None] = deque()
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: pb.GenerateResponse | None) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> pb.GenerateResponse | None:
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class _Stream:
    """One engine Generate call, read to its end whatever the HTTP request that consumes the messages
    does (it may be cancelled at any await, and the engine's final usage must still be read): the call
    hands each message over as it arrives (a GenerateMany stream's reader, or a task of the call's own)."""

    def __init__(self, call: GenerateCall | MultiplexedCall) -> None:
        self.call = call
        self.last: pb.GenerateResponse | None = None
        self.finished = False
        self.error = ""
        self.refusal: grpc.aio.AioRpcError | None = None
        self.messages = _Inbox()
        # Done once the call has ended.
        self.reader: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call.listen(self._take, self._end)

    def _take(self, message: pb.GenerateResponse) -> None:
        self.last = message
        if message.finished:
            self.finished = True
            self.error = message.error
        self.messages.put_nowait(message)

    def _end(self, error: grpc.aio.AioRpcError | None) -> None:
        if error is not None:
            if self.last is None:
                self.refusal = error
            self.error = from_grpc(error).message
        elif not self.finished:
            self.error = self.error or "the engine ended the stream without its final message"
        self.finished = True
        self.messages.put_nowait(_END)
        if not self.reader.done():
            self.reader.set_result(None)


class Generation:
    """Use: `await start()`, iterate `messages()`, then `await close()` (or `settle_in_background()`)."""

    def __init__(
        self,
        engine: EngineClient,
        requests: list[pb.GenerateRequest],
        outcome: Outcome,
        timeout: float,
        settle_timeout: float,
        sink: OutcomeSink,
        on_gap: GapObserver | None = None,
        open_generations: set[Generation] | None = None,
        on_closed: Callable[[], None] | None = None,
        on_unbilled: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._on_closed = on_closed
        # Called when the request ends with nothing to bill (nothing reached the engine's model).
        self.on_unbilled = on_unbilled
        outcome.engine_address = engine.address
        self._open_generations = open_generations if open_generations is not None else set()
        self._interruption = ""
        outcome.engine_request_ids = [r.request_id for r in requests]
        self._requests = requests
        self._timeout = timeout
        self._settle_timeout = settle_timeout
        self._sink = sink
        self._on_gap = on_gap
        self._streams: list[_Stream] = []
        self._firsts: list[pb.GenerateResponse] = []
        self.outcome = outcome
        self._started = time.monotonic()
        self._first_token_at: float | None = None
        self._last_token_at = 0.0
        self._closed = False
        self._asked_for_held_usage = False

    async def start(self, settling: set[asyncio.Task]) -> None:
        """Opens every engine call and waits for its first message, so that a refused request
        becomes an HTTP error before any byte of a stream is sent. A client gone meanwhile is settled
        like one gone later: abort, then the engine's final usage."""
        self._streams = [_Stream(self._engine.generate(r, timeout=self._timeout)) for r in self._requests]
        self._open_generations.add(self)
        try:
            self._firsts = [await self._first(s) for s in self._streams]
        except asyncio.CancelledError:
            self.settle_in_background([], settling)
            raise
        except ApiError:
            # Refused before any output (by the engine or by a broken call): abort any sibling that
            # started, and record what the engine counted for it.
            self.settle_in_background([], settling, status="error")
            raise

    async def _first(self, stream: _Stream) -> pb.GenerateResponse:
        message = await stream.messages.get()
        if message is _END:
            if stream.refusal is not None:
                raise from_grpc(stream.refusal) from stream.refusal
            raise ApiError(502, stream.error or "The engine closed the stream without output.", code="engine_error")
        if message.model:
            self.outcome.model = message.model
        return message

    def _observe(self, message: pb.GenerateResponse) -> None:
        choices = message.choices
        tokens = len(choices[0].token_ids) if len(choices) == 1 else sum(len(c.token_ids) for c in choices)
        if not tokens:
            return
        now = time.monotonic()
        if self._first_token_at is None:
            self._first_token_at = now
        elif self._on_gap is not None:
            self._on_gap(now - self._last_token_at, tokens)
        self._last_token_at = now

    async def messages(self) -> AsyncIterator[tuple[int, pb.GenerateResponse]]:
        """(prompt index, message) pairs until every stream has ended."""
        for index, first in enumerate(self._firsts):
            self._observe(first)
            yield index, first
        if len(self._streams) == 1:
            queue = self._streams[0].messages
            while (message := await queue.get()) is not _END:
                self._observe(message)
                yield 0, message
            return
        merged: asyncio.Queue[tuple[int, pb.GenerateResponse | None]] = asyncio.Queue()

        async def forward(index: int, stream: _Stream) -> None:
            while (message := await stream.messages.get()) is not _END:
                merged.put_nowait((index, message))
            merged.put_nowait((index, _END))

        forwards = [asyncio.create_task(forward(i, s)) for i, s in enumerate(self._streams)]
        try:
            remaining = len(forwards)
            while remaining:
                index, message = await merged.get()
                if message is _END:
                    remaining -= 1
                    continue
                self._observe(message)
                yield index, message
        finally:
            for task in forwards:
                task.cancel()

    @property
    def prompt_count(self) -> int:
        return len(self._requests)

    @property
    def error(self) -> str:
        return self._interruption or next((s.error for s in self._streams if s.error), "")

    def interrupt(self, reason: str, tasks: set[asyncio.Task]) -> None:
        """Ends the request early (the gateway is stopping): the engine aborts it and its stream ends as
        usual, with the final usage; `error` then says why."""
        unfinished = [r.request_id for r, s in zip(self._requests, self._streams) if not s.finished]
        if self._closed or not unfinished:
            return
        self._interruption = reason
        task = asyncio.create_task(self._engine.abort(unfinished, timeout=self._settle_timeout))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def usage(self) -> tuple[int, int, int]:
        """(prompt, completion, cached) tokens so far, summed over the engine calls."""
        prompt = completion = cached = 0
        for stream in self._streams:
            if stream.last is not None:
                usage = stream.last.usage
                prompt += usage.prompt_tokens
                completion += usage.completion_tokens
                cached += usage.cached_tokens
        return prompt, completion, cached

    async def close(self, finish_reasons: list[str]) -> None:
        """Records the outcome once (the sink makes it durable); the streams are over."""
        if self._closed:
            return
        self._mark_closed()
        # A call that broke before its final message (its connection, or the GenerateMany stream that
        # carried it, failed) was aborted in the engine, which holds what it counted for us.
        await self._held_usage_of_unfinished_streams()
        outcome = self.outcome
        if not outcome.model:
            # The model the engine resolved, from any call's last message (the first one may have been refused).
            outcome.model = next((s.last.model for s in self._streams if s.last is not None and s.last.model), "")
        outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens = self.usage()
        outcome.finish_reasons = finish_reasons
        if self._interruption:
            outcome.status = "abort"
        else:
            # A request settled as aborted (the client left) stays so, even if its calls then finished.
            complete = outcome.status != "abort" and all(s.last is not None and s.last.finished for s in self._streams)
            outcome.status = request_status(finish_reasons, bool(self.error) or outcome.status == "error", complete)
        finals = [s.last for s in self._streams if s.last is not None and s.last.finished]
        if finals:
            outcome.generation_seconds = max(f.timings.generation_seconds for f in finals)
        if self._first_token_at is not None:
            outcome.time_to_first_token_seconds = self._first_token_at - self._started
        outcome.duration_seconds = time.monotonic() - self._started
        await self._sink(outcome)

    def settle_in_background(self, finish_reasons: list[str], tasks: set[asyncio.Task], status: str = "abort") -> None:
        """The client left (or a sibling call was refused): abort what still runs, read each call to the
        engine's final usage, then record; in a task that the HTTP request does not own."""
        if self._closed:
            return
        task = asyncio.create_task(self._settle(finish_reasons, status))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _settle(self, finish_reasons: list[str], status: str) -> None:
        open_streams = [s for s in self._streams if not s.finished]
        try:
            if open_streams:
                ids = [r.request_id for r, s in zip(self._requests, self._streams) if not s.finished]
                await self._engine.abort(ids, timeout=self._settle_timeout)
            async with asyncio.timeout(self._settle_timeout):
                await asyncio.gather(*(s.reader for s in self._streams))
        except (grpc.aio.AioRpcError, TimeoutError) as error:
            log.warning("could not settle request %s: %s", self.outcome.request_id, error)
            for stream in open_streams:
                stream.call.cancel()
        try:
            await self._held_usage_of_unfinished_streams()
        finally:
            reasons = list(finish_reasons)
            for stream in open_streams:
                if stream.last is not None:
                    reasons += [FINISH_REASONS[c.finish_reason] for c in stream.last.choices if c.finish_reason]
            self.outcome.status = status
            if any(s.last is not None for s in self._streams):
                await self.close(reasons or ["abort"])
            else:
                # Nothing reached the engine's model (refused, or unreachable): no tokens, no event.
                self._mark_closed()
                if self.on_unbilled is not None:
                    self.on_unbilled()

    async def _held_usage_of_unfinished_streams(self) -> None:
        """A call cut before its final message reached us (the client left while it queued, or the abort
        did not end it within the settle timeout and it was cancelled) may still have been counted by the
        engine, which holds its final usage for us: ask for it, so the event bills what the engine counted."""
        if self._asked_for_held_usage:
            return
        self._asked_for_held_usage = True
        unseen = {
            r.request_id: s
            for r, s in zip(self._requests, self._streams)
            if (s.last is None or not s.last.finished) and r.caller
        }
        if not unseen:
            return
        caller = next(iter(self._requests)).caller
        try:
            held_usage = await self._engine.claim_held(caller, list(unseen), self._settle_timeout)
        except grpc.aio.AioRpcError as error:
            log.warning("could not ask the engine for the usage of request %s: %s", self.outcome.request_id, error)
            return
        for held in held_usage:
            unseen[held.request_id].last = pb.GenerateResponse(
                request_id=held.request_id,
                model=held.model,
                usage=held.usage,
                finished=True,
                choices=[pb.ChoiceDelta(index=i, finish_reason=r) for i, r in enumerate(held.finish_reasons)],
            )

    def _mark_closed(self) -> None:
        self._closed = True
        self._open_generations.discard(self)
        if self._on_closed is not None:
            self._on_closed()
            self._on_closed = None
