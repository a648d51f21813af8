"""Tells each WatchKeys stream of every change to the keys, from whichever replica: one read of the
database's change number serves all the streams of this process. It reads at once after a change on this
replica, or on another (on PostgreSQL, services.metering.key_changes wakes it), and every POLL_SECONDS
(LISTENING_POLL_SECONDS when woken by the other replicas: a safety net)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from services.metering.keys import KeyRecord
from services.metering.ledger import Ledger

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
LISTENING_POLL_SECONDS = 1.0


class KeyWatch:
    def __init__(self, ledger: Ledger, poll_seconds: float = POLL_SECONDS) -> None:
        self._ledger = ledger
        self._poll = poll_seconds
        self._version = 0
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def poke(self) -> None:
        """A key changed here: look now instead of at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                version = await self._ledger.key_version()
                if version != self._version:
                    async with self._changed:
                        self._version = version
                        self._changed.notify_all()
                if self._failing:
                    log.info("key changes are read again")
                self._failing = False
            except Exception as error:
                # Once per outage, not every poll.
                if not self._failing:
                    log.warning("key changes not read (watches wait until they are): %s", error)
                self._failing = True
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll)
            except TimeoutError:
                pass
            self._wake.clear()

    async def updates(self) -> AsyncIterator[tuple[bool, list[KeyRecord]]]:
        """(full, keys): every key first, then the keys changed since what was sent, each time the
        change number moves past it (keys may be empty: something else changed)."""
        keys = await self._ledger.keys_since(0)
        sent = max((k.version for k in keys), default=0)
        yield True, keys
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda after=sent: self._version > after)
                # Every change up to this number is committed (numbers are taken inside the change's
                # transaction, one change at a time).
                seen = self._version
            newer = await self._ledger.keys_since(sent)
            sent = max([seen, *(k.version for k in newer)])
            # Sent even with no key in it (a limit or a team changed): gateways read the limits again.
            yield False, newer
