"""One OpenAI request's engine calls: opens them, follows their cumulative usage, and settles them
when the client goes away (abort in the engine, then wait for the final usage)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from llmserve.engine.v1 import engine_pb2 as pb

from services.engine.client import EngineClient
from services.gateway.errors import ApiError, from_grpc

log = logging.getLogger(__name__)

FINISH_REASONS = {
    pb.FINISH_REASON_UNSPECIFIED: None,
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_ABORT: "abort",
    pb.FINISH_REASON_ERROR: "error",
}


@dataclass
class Outcome:
    """What one request produced: for metrics and the usage event."""

    request_id: str
    endpoint: str
    model: str
    api_key_id: str
    streamed: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | abort | error
    time_to_first_token_seconds: float = 0.0
    generation_seconds: float = 0.0
    duration_seconds: float = 0.0
    trace_id: str = ""
    span_id: str = ""


OutcomeSink = Callable[[Outcome], None]
GapObserver = Callable[[float, int], None]


class _Stream:
    """One engine Generate call and the last cumulative usage it reported."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self.call = call
        self.last: pb.GenerateResponse | None = None
        self.finished = False
        self.error = ""

    def see(self, message: pb.GenerateResponse) -> None:
        self.last = message
        if message.finished:
            self.finished = True
            self.error = message.error


class Generation:
    """Use: `await start()`, iterate `messages()`, then `close()` (or `settle_in_background()`)."""

    def __init__(
        self,
        engine: EngineClient,
        requests: list[pb.GenerateRequest],
        outcome: Outcome,
        timeout: float,
        settle_timeout: float,
        sink: OutcomeSink,
        on_gap: GapObserver | None = None,
    ) -> None:
        self._engine = engine
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

    async def start(self) -> None:
        """Opens every engine call and waits for its first message, so that a refused request
        becomes an HTTP error before any byte of a stream is sent."""
        self._streams = [_Stream(self._engine.generate(r, timeout=self._timeout)) for r in self._requests]
        try:
            self._firsts = list(await asyncio.gather(*(self._read_one(s) for s in self._streams)))
        except BaseException:
            for stream in self._streams:
                stream.call.cancel()
            # The request was refused or failed before any output: still one outcome, with no tokens.
            self.outcome.status = "error"
            self.close([])
            raise

    async def _read_one(self, stream: _Stream) -> pb.GenerateResponse:
        try:
            message = await stream.call.read()
        except grpc.aio.AioRpcError as error:
            raise from_grpc(error) from error
        if message is grpc.aio.EOF:
            raise ApiError(502, "The engine closed the stream without output.", code="engine_error")
        stream.see(message)
        if stream.finished:
            await self._read_eof(stream)
        return message

    @staticmethod
    async def _read_eof(stream: _Stream) -> None:
        """After the final message the call still has to end (status, trailers): reading to EOF ends
        it here, and with it the client span that tracing wraps around the iteration."""
        try:
            await stream.call.read()
        except grpc.aio.AioRpcError:
            pass

    def _observe(self, message: pb.GenerateResponse) -> None:
        tokens = sum(len(c.token_ids) for c in message.choices)
        if not tokens:
            return
        now = time.monotonic()
        if self._first_token_at is None:
            self._first_token_at = now
        elif self._on_gap is not None:
            self._on_gap(now - self._last_token_at, tokens)
        self._last_token_at = now

    async def messages(self) -> AsyncIterator[tuple[int, pb.GenerateResponse]]:
        """(prompt index, message) pairs until every stream has finished."""
        for index, first in enumerate(self._firsts):
            self._observe(first)
            yield index, first
        if len(self._streams) == 1:
            stream = self._streams[0]
            while not stream.finished:
                message = await self._next(stream)
                if message is None:
                    break
                self._observe(message)
                yield 0, message
            return
        queue: asyncio.Queue[tuple[int, pb.GenerateResponse | None]] = asyncio.Queue()

        async def pump(index: int, stream: _Stream) -> None:
            try:
                while not stream.finished:
                    message = await self._next(stream)
                    if message is None:
                        break
                    await queue.put((index, message))
            finally:
                await queue.put((index, None))

        pumps = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self._streams) if not s.finished]
        try:
            remaining = len(pumps)
            while remaining:
                index, message = await queue.get()
                if message is None:
                    remaining -= 1
                    continue
                self._observe(message)
                yield index, message
        finally:
            for task in pumps:
                task.cancel()

    async def _next(self, stream: _Stream) -> pb.GenerateResponse | None:
        """The next message, or None when the stream broke (noted as an error on the stream)."""
        try:
            message = await stream.call.read()
        except grpc.aio.AioRpcError as error:
            stream.finished = True
            stream.error = from_grpc(error).message
            return None
        if message is grpc.aio.EOF:
            stream.finished = True
            stream.error = stream.error or "the engine ended the stream without its final message"
            return None
        stream.see(message)
        if stream.finished:
            await self._read_eof(stream)
        return message

    @property
    def prompt_count(self) -> int:
        return len(self._requests)

    @property
    def error(self) -> str:
        return next((s.error for s in self._streams if s.error), "")

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

    def close(self, finish_reasons: list[str]) -> None:
        """Records the outcome once; the streams are over."""
        if self._closed:
            return
        self._closed = True
        outcome = self.outcome
        outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens = self.usage()
        outcome.finish_reasons = finish_reasons
        if self.error or outcome.status == "error":
            outcome.status = "error"
        elif "abort" in finish_reasons or not all(s.finished for s in self._streams):
            outcome.status = "abort"
        finals = [s.last for s in self._streams if s.last is not None and s.last.finished]
        if finals:
            outcome.generation_seconds = max(f.timings.generation_seconds for f in finals)
        if self._first_token_at is not None:
            outcome.time_to_first_token_seconds = self._first_token_at - self._started
        outcome.duration_seconds = time.monotonic() - self._started
        self._sink(outcome)

    def settle_in_background(self, finish_reasons: list[str], tasks: set[asyncio.Task]) -> None:
        """The client left: abort what still runs, wait for the engine's final usage, then record."""
        if self._closed:
            return
        task = asyncio.create_task(self._settle(finish_reasons))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _settle(self, finish_reasons: list[str]) -> None:
        open_streams = [s for s in self._streams if not s.finished]
        try:
            if open_streams:
                ids = [r.request_id for r, s in zip(self._requests, self._streams) if not s.finished]
                await self._engine.abort(ids, timeout=self._settle_timeout)
                async with asyncio.timeout(self._settle_timeout):
                    for stream in open_streams:
                        while not stream.finished and await self._next(stream) is not None:
                            pass
        except (grpc.aio.AioRpcError, TimeoutError) as error:
            log.warning("could not settle request %s: %s", self.outcome.request_id, error)
            for stream in open_streams:
                stream.call.cancel()
        finally:
            reasons = list(finish_reasons)
            for stream in open_streams:
                if stream.last is not None:
                    reasons += [FINISH_REASONS[c.finish_reason] for c in stream.last.choices if c.finish_reason]
            self.outcome.status = "abort"
            self.close(reasons or ["abort"])
