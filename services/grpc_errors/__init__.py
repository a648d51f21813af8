"""A server interceptor that maps domain exceptions to gRPC status codes through one table.

Exceptions outside the table are bugs: they are logged with their stack and answered INTERNAL
with a message that leaks nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

log = logging.getLogger(__name__)

_HANDLER_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")

StatusTable = Mapping[type[BaseException], grpc.StatusCode]


# Status details travel in a header; past the caller's metadata limit (16 KiB in grpc-python) the call
# fails with RESOURCE_EXHAUSTED instead, which a client would take for a rate limit. Errors that quote
# the request (a 20,000-character model name, a list of 3,000 ids) are cut well below it.
MAX_DETAILS_CHARS = 2048


def bounded_details(message: str) -> str:
    if len(message) <= MAX_DETAILS_CHARS:
        return message
    cut = len(message) - MAX_DETAILS_CHARS
    return f"{message[:MAX_DETAILS_CHARS]}... ({cut} more characters)"


def replace_behavior(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    """The same handler with its behavior replaced by `wrap(behavior, streams_responses)`, which must
    keep the call shape: a coroutine for a unary response, an async generator for a streamed one (the
    request argument, a message or an iterator, is passed through). grpc's handlers are named tuples."""
    for kind in _HANDLER_KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            return handler._replace(**{kind: wrap(behavior, handler.response_streaming)})
    return handler


def status_for(error: BaseException, table: StatusTable) -> grpc.StatusCode | None:
    for kind in type(error).__mro__:
        if kind in table:
            return table[kind]
    return None


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, table: StatusTable) -> None:
        self._table = table

    async def _abort(self, context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
        code = status_for(error, self._table)
        if code is None:
            log.exception("bug in %s", method, exc_info=error)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")
        await context.abort(code, bounded_details(str(error)))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        return replace_behavior(handler, lambda behavior, streams: self._guard(behavior, details.method, streams))

    def _guard(self, behavior: Callable[..., Any], method: str, streams: bool) -> Callable[..., Any]:
        """The same call shape as `behavior` (the request argument is passed through, a message or an
        iterator): a coroutine for a unary response, an async generator for a streamed one."""
        if streams:

            async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await self._abort(context, error, method)

            return streamed

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await self._abort(context, error, method)

        return unary
