"""GenerateMany: many Generate calls on one gRPC stream, with every update that is ready sent in one message.

Each request runs in a task of its own, exactly as its own Generate call would (same billing, same span,
same cancellation); what differs is the sending. The tasks put their updates into one batch, and the
stream sends the batch whenever the previous send is done: when vLLM's output handler wakes the streams
of one engine step together, their N updates leave in one message (one write, one HTTP/2 frame) instead of N.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from llmserve.engine.v1 import engine_pb2 as pb
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from services.grpc_errors import StatusTable, bounded_details, status_for

log = logging.getLogger(__name__)

# One request's id and stream of updates (of the server's own kind, which `Fill` writes into a message of
# the batch).
Updates = Callable[[pb.GenerateRequest], tuple[str, AsyncIterator[Any]]]
Fill = Callable[[pb.GenerateResponse, str, Any], pb.GenerateResponse]

# A bound on one message, far below gRPC's size limit even with logprobs; more updates wait for the next.
MAX_UPDATES_PER_MESSAGE = 1024

SPAN_NAME = "/llmserve.engine.v1.EngineService/Generate"

_tracer = trace.get_tracer(__name__)


class _Outbox:
    """The updates and ends not sent yet, in the order the requests produced them."""

    def __init__(self, fill: Fill) -> None:
        self._fill = fill
        self._batches: list[pb.GenerateManyResponse] = []
        self._ready = asyncio.Event()

    def _current(self) -> pb.GenerateManyResponse:
        if not self._batches or len(self._batches[-1].updates) >= MAX_UPDATES_PER_MESSAGE:
            self._batches.append(pb.GenerateManyResponse())
        self._ready.set()
        return self._batches[-1]

    def update(self, request_id: str, update: Any) -> None:
        self._fill(self._current().updates.add(), request_id, update)

    def end(self, request_id: str, code: grpc.StatusCode, message: str = "") -> None:
        self._current().ends.add(request_id=request_id, code=code.value[0], message=message)

    def wake(self) -> None:
        self._ready.set()

    async def wait(self) -> None:
        self._ready.clear()
        await self._ready.wait()

    def pop(self) -> pb.GenerateManyResponse | None:
        return self._batches.pop(0) if self._batches else None


async def generate_many(
    updates: Updates,
    fill: Fill,
    statuses: StatusTable,
    requests: AsyncIterator[pb.GenerateManyRequest],
    max_open: int = 1024,
) -> AsyncIterator[pb.GenerateManyResponse]:
    """The responses of one GenerateMany stream. It ends once the caller has sent its last request and every
    request has ended; cancelling it (the caller went away) cancels every request still open. A request
    beyond `max_open` open ones ends at once with RESOURCE_EXHAUSTED."""
    outbox = _Outbox(fill)
    running: dict[str, asyncio.Task] = {}

    def finished(request_id: str) -> None:
        running.pop(request_id, None)
        outbox.wake()

    reading = asyncio.create_task(_read(requests, running, finished, outbox, updates, statuses, max_open))
    reading.add_done_callback(lambda _: outbox.wake())
    try:
        while True:
            batch = outbox.pop()
            if batch is not None:
                yield batch
                continue
            if reading.done():
                if reading.exception() is not None:
                    raise reading.exception()
                if not running:
                    return
            await outbox.wait()
    finally:
        reading.cancel()
        for task in list(running.values()):
            task.cancel()
        await asyncio.gather(reading, *running.values(), return_exceptions=True)


async def _read(
    requests: AsyncIterator[pb.GenerateManyRequest],
    running: dict[str, asyncio.Task],
    finished: Callable[[str], None],
    outbox: _Outbox,
    updates: Updates,
    statuses: StatusTable,
    max_open: int,
) -> None:
    async for message in requests:
        if message.WhichOneof("kind") == "cancel":
            task = running.get(message.cancel)
            if task is not None:
                task.cancel()
            continue
        start = message.start
        request_id = start.request.request_id
        if not request_id:
            outbox.end("", grpc.StatusCode.INVALID_ARGUMENT, "request_id is required on GenerateMany")
            continue
        if request_id in running:
            outbox.end(
                request_id, grpc.StatusCode.INVALID_ARGUMENT, f"request {request_id} is already open on this stream"
            )
            continue
        if len(running) >= max_open:
            outbox.end(
                request_id,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this GenerateMany stream already carries {len(running)} open requests; at most {max_open}"
                " are accepted (max_stream_requests): wait for one to end or open another stream",
            )
            continue
        task = asyncio.create_task(_run(start, outbox, updates, statuses))
        running[request_id] = task
        task.add_done_callback(lambda _, rid=request_id: finished(rid))


async def _run(start: pb.GenerateStart, outbox: _Outbox, updates: Updates, statuses: StatusTable) -> None:
    request_id = start.request.request_id
    parent = propagate.extract(dict(start.trace_context)) if start.trace_context else otel_context.Context()
    try:
        with _tracer.start_as_current_span(SPAN_NAME, context=parent, kind=trace.SpanKind.SERVER) as span:
            span.set_attribute("rpc.system", "grpc")
            rid, stream = updates(start.request)
            async for update in stream:
                outbox.update(rid, update)
        outbox.end(request_id, grpc.StatusCode.OK)
    except asyncio.CancelledError:
        outbox.end(request_id, grpc.StatusCode.CANCELLED, "cancelled")
        raise
    except Exception as error:  # noqa: BLE001 - every request ends with a status, as its own call would
        code = status_for(error, statuses)
        if code is None:
            log.exception("bug in GenerateMany request %s", request_id, exc_info=error)
            outbox.end(request_id, grpc.StatusCode.INTERNAL, "internal error in Generate; see the server log")
            return
        outbox.end(request_id, code, bounded_details(str(error)))
