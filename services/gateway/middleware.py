"""ASGI middleware: the API key check (401/403, from the headers alone, before the body is read), the
body-size limit (413) and read deadline (408), the in-flight limit (429) and per-request accounting."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match

from services.gateway.access import AccessPolicy
from services.gateway.errors import ApiError
from services.gateway.metrics import GatewayMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The tag of a route that takes engine time: each of its requests holds an in-flight slot.
ENGINE_WORK = "engine work"
# Routes that are not counted per request (the scrape and the probe would outnumber the traffic).
_UNCOUNTED = frozenset({"/health", "/metrics"})


class RouteTable:
    """What the app's routes declare about a request path: its metric label (the route's path template;
    paths that are no route of ours get none) and whether it takes engine time."""

    def __init__(self, routes: Iterable[BaseRoute]) -> None:
        api_routes = [r for r in routes if isinstance(r, APIRoute) and r.path not in _UNCOUNTED]
        self.engine_paths = frozenset(r.path for r in api_routes if ENGINE_WORK in r.tags)
        self._exact = {r.path for r in api_routes if "{" not in r.path}
        self._templated = [r for r in api_routes if "{" in r.path]

    def label(self, scope: Scope) -> str | None:
        path = scope["path"]
        if path in self._exact:
            return path
        partial = None
        for route in self._templated:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return _template(route.path)
            if match is Match.PARTIAL and partial is None:
                partial = _template(route.path)
        return partial


def _template(path: str) -> str:
    """ "/v1/models/{model:path}" -> "/v1/models/{model}"."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


async def send_error(send: Send, error: ApiError, path: str = "") -> None:
    body = orjson.dumps(error.body_for(path))
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


SLOTS = "llmserve.in_flight_slots"


class InFlight:
    """Generations in flight: one slot per request, and one more per extra prompt of a completions
    request (each becomes its own engine request)."""

    def __init__(self, limit: int, metrics: GatewayMetrics) -> None:
        self.limit = limit
        self.count = 0
        self._metrics = metrics

    def take(self, scope: Scope, slots: int) -> bool:
        if self.count + slots > self.limit:
            return False
        self.count += slots
        self._metrics.in_flight.inc(slots)
        scope[SLOTS] = scope.get(SLOTS, 0) + slots
        return True

    def release_all(self, scope: Scope) -> None:
        slots = scope.pop(SLOTS, 0)
        self.count -= slots
        self._metrics.in_flight.dec(slots)

    def busy_error(self) -> ApiError:
        return ApiError(
            429,
            f"The gateway is at its limit of {self.limit} requests in flight; retry shortly.",
            code="rate_limit_exceeded",
        )


class RequestLimits:
    def __init__(
        self,
        app: ASGIApp,
        metrics: GatewayMetrics,
        access: AccessPolicy,
        max_body_bytes: int,
        in_flight: InFlight,
        routes: RouteTable,
        body_timeout_seconds: float = 30.0,
    ) -> None:
        self.app = app
        self.routes = routes
        self.body_timeout_seconds = body_timeout_seconds
        self.metrics = metrics
        self.access = access
        self.max_body_bytes = max_body_bytes
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = self.routes.label(scope)
        status_seen: list[int] = []

        async def accounting_send(message: Message) -> None:
            if not status_seen and message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        raw_headers = scope.get("headers", [])
        headers = dict(raw_headers)
        try:
            if any(sum(1 for name, _ in raw_headers if name == h) > 1 for h in (b"authorization", b"x-api-key")):
                # A proxy that checks the first and a server that takes the last would disagree on who pays.
                raise ApiError(400, "Send one Authorization header.", code="invalid_api_key")
            authorization = headers.get(b"authorization")
            if authorization is None and b"x-api-key" in headers:
                # Anthropic's SDKs send the key as x-api-key: the same keys, the same check.
                authorization = b"Bearer " + headers[b"x-api-key"]
            key_id = self.access.key_id(
                path, authorization.decode("latin-1") if authorization else None, scope.get("method", "GET")
            )
        except ApiError as refused:
            await send_error(accounting_send, refused, path)
            self._account(scope, endpoint, status_seen)
            return
        scope.setdefault("state", {})["key_id"] = key_id
        too_large = ApiError(413, f"The request body exceeds {self.max_body_bytes} bytes.", code="request_too_large")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_error(accounting_send, too_large, path)
            self._account(scope, endpoint, status_seen)
            return
        try:
            async with asyncio.timeout(self.body_timeout_seconds):
                body, complete = await self._read_body(receive)
        except TimeoutError:
            await send_error(
                accounting_send,
                ApiError(
                    408,
                    f"The request body did not arrive within {self.body_timeout_seconds:g} s.",
                    code="request_timeout",
                ),
                path,
            )
            self._account(scope, endpoint, status_seen)
            return
        if not complete:
            await send_error(accounting_send, too_large, path)
            self._account(scope, endpoint, status_seen)
            return
        replayed = False

        async def replay_receive() -> Message:
            # The app gets the buffered body once; later calls wait for the client's disconnect.
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if path in self.routes.engine_paths and not self.in_flight.take(scope, 1):
            await send_error(accounting_send, self.in_flight.busy_error(), path)
            self._account(scope, endpoint, status_seen)
            return
        try:
            await self.app(scope, replay_receive, accounting_send)
        finally:
            self.in_flight.release_all(scope)
            self._account(scope, endpoint, status_seen)

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        """The whole body, or (partial, False) once it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), True

    def _account(self, scope: Scope, endpoint: str | None, status_seen: list[int]) -> None:
        if endpoint is None:
            return
        model = scope.get("state", {}).get("model")
        # A response never started means the client left before it: 499, as nginx logs it.
        self.metrics.request_done(endpoint, model, status_seen[0] if status_seen else 499)
