"""A read repeated every so often, and at once when poked (metering's key watch says something changed):
how a gateway follows metering's limits and price book."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class PokedPoll:
    def __init__(self, read: Callable[[], Awaitable[None]], seconds: float) -> None:
        self._read = read
        self._seconds = seconds
        self._now = asyncio.Event()

    def poke(self) -> None:
        self._now.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._now.wait(), self._seconds)
            except TimeoutError:
                pass
            self._now.clear()
            await self._read()
