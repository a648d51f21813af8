"""uvicorn's HTTP protocol with a deadline on each request's head: a connection that sends no request,
or sends its headers a byte at a time, is closed once the deadline passes (uvicorn's own keep-alive
timer only starts after a first response, so such connections would stay open for good)."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadDeadlineProtocol(HttpToolsProtocol):
    head_timeout_seconds = 10.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request on this connection gets its own deadline (keep-alive closes it sooner if idle).
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(self.head_timeout_seconds, self._expire)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _expire(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def head_deadline_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """The protocol class to pass as uvicorn's `http`, with this deadline."""
    return type("HeadDeadlineProtocol", (_HeadDeadlineProtocol,), {"head_timeout_seconds": seconds})
