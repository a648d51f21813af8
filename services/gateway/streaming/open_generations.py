"""The requests reading from an engine now, and the background settling of those whose client left:
what a SIGTERM drain interrupts and what shutdown waits for."""

from __future__ import annotations

import asyncio

from services.gateway.streaming.generation import Generation


class OpenGenerations:
    def __init__(self) -> None:
        self.open: set[Generation] = set()
        # Requests whose client left, waiting for the engine's final usage.
        self.settling: set[asyncio.Task] = set()

    def interrupt_all(self, reason: str) -> int:
        """Ends every open request early (the engine aborts it; its usage is still recorded)."""
        generations = list(self.open)
        for generation in generations:
            generation.interrupt(reason, self.settling)
        return len(generations)

    async def wait_settled(self, timeout: float) -> None:
        if self.settling:
            await asyncio.wait(self.settling, timeout=timeout)
