"""The caller's side of GenerateMany: one long-lived stream per engine, carrying every Generate call.

`GenerateStreams.open(request)` returns a call that reads like grpc.aio's own streaming call (`read()` gives
messages then `grpc.aio.EOF`, or raises `grpc.aio.AioRpcError`; `cancel()`), so code written for Generate
calls works unchanged. The stream is opened on first use and again after it breaks; a break ends every
call open on it with the stream's error (as each call's own connection breaking would).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections.abc import Callable

import grpc
from llmserve.engine.v1 import engine_pb2 as pb
from opentelemetry import propagate, trace

log = logging.getLogger(__name__)

_tracer = trace.get_tracer(__name__)

SPAN_NAME = "/llmserve.engine.v1.EngineService/Generate"

_Item = pb.GenerateResponse | grpc.aio.AioRpcError | object


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class MultiplexedCall:
    """One Generate call carried by a GenerateMany stream."""

    def __init__(self, streams: GenerateStreams, request_id: str, timeout: float | None, span: trace.Span) -> None:
        self.request_id = request_id
        self._streams = streams
        self._items: asyncio.Queue[_Item] = asyncio.Queue()
        self._listener: (
            tuple[Callable[[pb.GenerateResponse], None], Callable[[grpc.aio.AioRpcError | None], None]] | None
        ) = None
        self._ended = False
        self._span = span
        self._timer = asyncio.get_running_loop().call_later(timeout, self._expire) if timeout else None

    def listen(
        self, on_message: Callable[[pb.GenerateResponse], None], on_end: Callable[[grpc.aio.AioRpcError | None], None]
    ) -> None:
        """Has the messages, then the end (None: OK), handed to these as they arrive, instead of read:
        no task of the caller's has to wake per message. Call it before anything is read."""
        self._listener = (on_message, on_end)

    def deliver(self, message: pb.GenerateResponse) -> None:
        if self._ended:
            return
        if self._listener is not None:
            self._listener[0](message)
        else:
            self._items.put_nowait(message)

    def end(self, code: grpc.StatusCode, details: str) -> None:
        """The engine ended it (OK: after its last message), or the stream broke."""
        if self._ended:
            return
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
        error = None if code is grpc.StatusCode.OK else _error(code, details)
        if self._listener is not None:
            self._listener[1](error)
        else:
            self._items.put_nowait(grpc.aio.EOF if error is None else error)
        if code is not grpc.StatusCode.OK:
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code.name}: {details}"))
        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        self._span.end()

    async def read(self) -> pb.GenerateResponse | object:
        item = await self._items.get()
        if item is grpc.aio.EOF or isinstance(item, grpc.aio.AioRpcError):
            self._items.put_nowait(item)  # every later read sees the end again
            if item is not grpc.aio.EOF:
                raise item
        return item

    def __aiter__(self) -> MultiplexedCall:
        return self

    async def __anext__(self) -> pb.GenerateResponse:
        item = await self.read()
        if item is grpc.aio.EOF:
            raise StopAsyncIteration
        return item

    def cancel(self) -> bool:
        """Cancels the request in the engine, as cancelling a Generate call does."""
        if self._ended:
            return False
        self._streams.cancel(self.request_id)
        self.end(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        return True

    def _expire(self) -> None:
        if not self._ended:
            self._streams.cancel(self.request_id)
            self.end(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


class GenerateStreams:
    """The GenerateMany stream to one engine and the calls open on it."""

    def __init__(self, open_stream: Callable[[], grpc.aio.StreamStreamCall]) -> None:
        self._open_stream = open_stream
        self._stream: grpc.aio.StreamStreamCall | None = None
        self._outgoing: asyncio.Queue[pb.GenerateManyRequest] | None = None
        self._calls: dict[str, MultiplexedCall] = {}
        self._tasks: list[asyncio.Task] = []

    def open(self, request: pb.GenerateRequest, timeout: float | None = None) -> MultiplexedCall:
        if not request.request_id:
            request.request_id = f"gen-{uuid.uuid4().hex}"
        span = _tracer.start_span(SPAN_NAME, kind=trace.SpanKind.CLIENT, attributes={"rpc.system": "grpc"})
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        call = MultiplexedCall(self, request.request_id, timeout, span)
        if request.request_id in self._calls:
            call.end(grpc.StatusCode.INVALID_ARGUMENT, f"request {request.request_id} is already open")
            return call
        self._calls[request.request_id] = call
        self._send(pb.GenerateManyRequest(start=pb.GenerateStart(request=request, trace_context=carrier)))
        return call

    def cancel(self, request_id: str) -> None:
        if self._calls.pop(request_id, None) is not None:
            self._send(pb.GenerateManyRequest(cancel=request_id))

    def _send(self, message: pb.GenerateManyRequest) -> None:
        if self._outgoing is None:
            self._connect()
        assert self._outgoing is not None
        self._outgoing.put_nowait(message)

    def _connect(self) -> None:
        # Opened outside any request's trace: the stream outlives the request that happened to open it.
        stream = contextvars.Context().run(self._open_stream)
        outgoing: asyncio.Queue[pb.GenerateManyRequest] = asyncio.Queue()
        self._stream, self._outgoing = stream, outgoing
        self._tasks = [
            asyncio.create_task(self._write(stream, outgoing)),
            asyncio.create_task(self._read(stream)),
        ]

    async def _write(self, stream: grpc.aio.StreamStreamCall, outgoing: asyncio.Queue[pb.GenerateManyRequest]) -> None:
        try:
            while True:
                await stream.write(await outgoing.get())
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
            log.debug("GenerateMany stream closed for writing: %s", error)

    async def _read(self, stream: grpc.aio.StreamStreamCall) -> None:
        code, details = grpc.StatusCode.UNAVAILABLE, "the engine ended the GenerateMany stream"
        try:
            while (message := await stream.read()) is not grpc.aio.EOF:
                calls = self._calls
                for update in message.updates:
                    call = calls.get(update.request_id)
                    if call is not None:
                        call.deliver(update)
                for end in message.ends:
                    call = calls.pop(end.request_id, None)
                    if call is not None:
                        call.end(_status(end.code), end.message)
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
        finally:
            self._broken(stream, code, details)

    def _broken(self, stream: grpc.aio.StreamStreamCall, code: grpc.StatusCode, details: str) -> None:
        """Ends every call on the stream and forgets it: the next call opens a new one."""
        if self._stream is not stream:
            return
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._stream = self._outgoing = None
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.end(code, details)
        stream.cancel()

    async def close(self) -> None:
        if self._stream is not None:
            self._broken(self._stream, grpc.StatusCode.CANCELLED, "the client closed")


_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def _status(number: int) -> grpc.StatusCode:
    return _STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
