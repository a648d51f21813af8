"""How the gateway stops on SIGTERM without losing a usage record or cutting a stream mid-way.

uvicorn stops accepting connections and waits for the open ones; this server adds the drain: in-flight
requests get `grace` seconds to finish, then each is interrupted (the engine aborts it), so its stream
ends with the usage chunk, an error event and [DONE], and its usage is recorded before the app's
lifespan shutdown hands the outbox to the sender's last delivery."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "The server is shutting down; the response was cut short."


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_seconds: float) -> None:
        super().__init__(config)
        self._app = app
        self._grace = grace_seconds

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = asyncio.create_task(self._interrupt_after_grace())
        try:
            await super().shutdown(sockets)
        finally:
            drain.cancel()

    async def _interrupt_after_grace(self) -> None:
        await asyncio.sleep(self._grace)
        generations = getattr(self._app.state, "generations", None)
        if generations is not None and (count := generations.interrupt_all(SHUTDOWN_REASON)):
            log.info("drain period over: interrupted %d request(s); their usage is recorded", count)
