"""ASGI middleware: the body-size limit (413), the in-flight limit (429) and per-request accounting."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from services.gateway.errors import ApiError
from services.gateway.metrics import GatewayMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
# Request paths become metric labels only when they are routes of ours.
ENDPOINTS = GENERATION_PATHS | {"/v1/models", "/tokenize", "/detokenize"}


async def send_error(send: Send, error: ApiError) -> None:
    body = orjson.dumps(error.body())
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, max_body_bytes: int, max_in_flight: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS or path.startswith("/v1/models/") else None
        if endpoint is not None and endpoint.startswith("/v1/models/"):
            endpoint = "/v1/models/{model}"
        status_seen: list[int] = []

        async def accounting_send(message: Message) -> None:
            if not status_seen and message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        too_large = ApiError(413, f"The request body exceeds {self.max_body_bytes} bytes.", code="request_too_large")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_error(accounting_send, too_large)
            self._account(scope, endpoint, status_seen)
            return
        body, complete = await self._read_body(receive)
        if not complete:
            await send_error(accounting_send, too_large)
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

        generation = path in GENERATION_PATHS
        if generation and self.in_flight >= self.max_in_flight:
            await send_error(
                accounting_send,
                ApiError(429, f"The gateway is at its limit of {self.max_in_flight} requests in flight; retry shortly.", code="rate_limit_exceeded"),
            )
            self._account(scope, endpoint, status_seen)
            return
        if generation:
            self.in_flight += 1
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, replay_receive, accounting_send)
        finally:
            if generation:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
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
