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

StatusTable = Mapping[type[BaseException], grpc.StatusCode]


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
        await context.abort(code, str(error))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await self._abort(context, error, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream_behavior = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for response in stream_behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await self._abort(context, error, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            client_stream_behavior = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await client_stream_behavior(requests, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await self._abort(context, error, method)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            bidi_behavior = handler.stream_stream

            async def stream_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    async for response in bidi_behavior(requests, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await self._abort(context, error, method)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
