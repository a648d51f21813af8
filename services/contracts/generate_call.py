"""One Generate call of its own, offering what a call on a GenerateMany stream offers: read it like
grpc.aio's call (`read()`, iteration, `cancel()`), or `listen` to have its messages handed over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from llmserve.engine.v1 import engine_pb2 as pb


class GenerateCall:
    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self._call = call
        self._reader: asyncio.Task | None = None

    def listen(
        self, on_message: Callable[[pb.GenerateResponse], None], on_end: Callable[[grpc.aio.AioRpcError | None], None]
    ) -> None:
        """Has the messages, then the end (None: OK), handed to these by a task reading the call to its end."""
        self._reader = asyncio.create_task(self._read_all(on_message, on_end))

    async def _read_all(
        self, on_message: Callable[[pb.GenerateResponse], None], on_end: Callable[[grpc.aio.AioRpcError | None], None]
    ) -> None:
        error = None
        try:
            while (message := await self._call.read()) is not grpc.aio.EOF:
                on_message(message)
        except grpc.aio.AioRpcError as failed:
            error = failed
        finally:
            on_end(error)

    async def read(self) -> Any:
        return await self._call.read()

    def __aiter__(self) -> Any:
        return self._call.__aiter__()

    def cancel(self) -> bool:
        return self._call.cancel()

    def __getattr__(self, name: str) -> Any:
        # code(), details(), metadata and the rest of grpc.aio's call.
        return getattr(self._call, name)
