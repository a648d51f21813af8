"""The server interceptor that checks each call's credential against the server's method policy."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

import grpc
from prometheus_client import Counter

from services.grpc_errors import replace_behavior
from services.service_auth.callers import Caller, ReloadingCallers

log = logging.getLogger(__name__)

# Full method name ("/pkg.Service/Method") → the roles that may call it. Methods of the server's own
# services that are missing here are refused to everyone (fail closed).
MethodPolicy = Mapping[str, frozenset[str]]

OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


_CALLER: ContextVar[Caller | None] = ContextVar("llmserve_caller", default=None)


def current_caller() -> Caller | None:
    """The authenticated caller of the RPC being handled; None on a server without a callers file."""
    return _CALLER.get()


class Callers(Protocol):
    def __len__(self) -> int: ...

    def identify(self, token: str) -> Caller | None: ...


def _as_caller(handler: grpc.RpcMethodHandler, caller: Caller) -> grpc.RpcMethodHandler:
    """The same handler, run with `caller` as the current caller."""

    def wrap(behavior: Callable[..., Any], streams: bool) -> Callable[..., Any]:
        if streams:

            async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                _CALLER.set(caller)
                async for response in behavior(request, context):
                    yield response

            return streamed

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _CALLER.set(caller)
            return await behavior(request, context)

        return unary

    return replace_behavior(handler, wrap)


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as the real one that only refuses."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext):  # noqa: ANN202
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    args = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, *args)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, *args)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, *args)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, *args)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a known token, PERMISSION_DENIED for a caller that lacks the method's role.
    Each refusal is counted (`failures`, labelled by method and reason) and logged without the token."""

    def __init__(self, callers: Callers, policy: MethodPolicy, failures: Counter) -> None:
        self._callers = callers
        self._policy = policy
        self._failures = failures

    def _token(self, details: grpc.HandlerCallDetails) -> str | None:
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                return token.strip() if scheme.lower() == "bearer" else None
        return None

    def _check(self, method: str, token: str | None) -> Caller | tuple[grpc.StatusCode, str]:
        if token is None:
            return grpc.StatusCode.UNAUTHENTICATED, "a service credential is required (authorization: Bearer <token>)"
        caller = self._callers.identify(token)
        if caller is None:
            return grpc.StatusCode.UNAUTHENTICATED, "unknown (or expired) service credential"
        allowed = self._policy.get(method, frozenset())
        if not caller.roles & allowed:
            log.warning("caller %s refused %s: lacks role %s", caller.name, method, "/".join(sorted(allowed)) or "-")
            return grpc.StatusCode.PERMISSION_DENIED, f"caller {caller.name} may not call {method}"
        return caller

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        handler = await continuation(details)
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        checked = self._check(method, self._token(details))
        if isinstance(checked, Caller):
            return _as_caller(handler, checked)
        code, message = checked
        if code is grpc.StatusCode.UNAUTHENTICATED:
            log.info("unauthenticated call to %s refused: %s", method, message)
        self._failures.labels(method, code.name.lower()).inc()
        return _refusal(handler, code, message)


def interceptor_from_file(
    callers_file: Path | None, policy: MethodPolicy, failures: Counter, service: str
) -> AuthInterceptor | None:
    """None (every call allowed, with a warning at start) when no callers file is configured."""
    if callers_file is None:
        log.warning("%s: no callers file configured: every gRPC call is allowed (see `make credentials`)", service)
        return None
    callers = ReloadingCallers(callers_file)
    log.info("%s: %d service callers from %s", service, len(callers), callers_file)
    return AuthInterceptor(callers, policy, failures)
