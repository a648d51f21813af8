"""The engine's held usage on disk. Finished entries waiting for their caller's confirmation survive an
engine restart, so a gateway lost for good and then the engine restarted before anyone claimed loses
nothing: at start they are held again, under callers whose lease has run out, for any gateway to claim.

Changes are written in batches behind the request path: until the caller itself is gone it still has
the event, so only the seconds after a caller's loss matter. A confirmation lost in a crash costs one
more delivery, which metering counts once (the event keeps its source and id)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

from services.engine.generation import FinishReason, Timings, Usage
from services.engine.usage.held import HeldUsage, HeldUsageStore

log = logging.getLogger(__name__)


def encode(held: HeldUsage) -> str:
    timings = held.timings
    return json.dumps(
        {
            "usage_context": held.usage_context.hex(),
            "model": held.model,
            "usage": [held.usage.prompt_tokens, held.usage.completion_tokens, held.usage.cached_tokens],
            "finish_reasons": [r.value for r in held.finish_reasons],
            "timings": None
            if timings is None
            else [
                timings.queue_seconds,
                timings.time_to_first_token_seconds,
                timings.generation_seconds,
                timings.total_seconds,
            ],
            "error": held.error,
        }
    )


def decode(request_id: str, caller: str, text: str) -> HeldUsage:
    entry = json.loads(text)
    return HeldUsage(
        request_id=request_id,
        caller=caller,
        usage_context=bytes.fromhex(entry["usage_context"]),
        model=entry["model"],
        usage=Usage(*entry["usage"]),
        finish_reasons=[FinishReason(r) for r in entry["finish_reasons"]],
        timings=None if entry["timings"] is None else Timings(*entry["timings"]),
        error=entry["error"],
        open=False,
    )


class HeldUsageJournal:
    """One SQLite file; used from one thread at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS held (request_id TEXT PRIMARY KEY, caller TEXT NOT NULL, entry TEXT NOT NULL)"
        )

    def load(self) -> list[HeldUsage]:
        rows = self._db.execute("SELECT request_id, caller, entry FROM held").fetchall()
        held = []
        for request_id, caller, text in rows:
            try:
                held.append(decode(request_id, caller, text))
            except (ValueError, KeyError, TypeError) as error:
                log.error("held usage of request %s cannot be read (%s): dropped", request_id, error)
        return held

    def apply(self, changes: dict[str, HeldUsage | None]) -> None:
        """Writes the entries and deletes those mapped to None, in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO held VALUES (?, ?, ?) ON CONFLICT(request_id) DO UPDATE SET caller = excluded.caller,"
                " entry = excluded.entry",
                [(h.request_id, h.caller, encode(h)) for h in changes.values() if h is not None],
            )
            self._db.executemany(
                "DELETE FROM held WHERE request_id = ?", [(r,) for r, h in changes.items() if h is None]
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class HeldUsageKeeper:
    """Restores the journal into the engine's held usage at start, then writes its changes every
    `interval` seconds, and once more at stop."""

    def __init__(self, journal: HeldUsageJournal, unconfirmed: HeldUsageStore, interval: float = 0.2) -> None:
        self._journal = journal
        self._unconfirmed = unconfirmed
        self._interval = interval
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        restored = await asyncio.to_thread(self._journal.load)
        self._unconfirmed.restore(restored)
        if restored:
            log.info("held usage of %d request(s) restored from disk, claimable by any gateway", len(restored))
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        changes = self._unconfirmed.take_changes()
        if not changes:
            return
        try:
            await asyncio.to_thread(self._journal.apply, changes)
        except sqlite3.Error as error:
            # Kept in memory as before; the next round writes them again.
            log.error("held usage not written to disk: %s", error)
            self._unconfirmed.return_changes(changes)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
        await asyncio.to_thread(self._journal.close)
