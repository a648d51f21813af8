"""Final usage the engine holds for a caller that bills it (a gateway) until that caller confirms it is
recorded durably.

A caller (a gateway) names itself "<source>/<incarnation>": the source survives its restarts (its
instance id), the incarnation is new at each start. When a gateway is killed, the requests it was
streaming are aborted here and their usage would be known to nobody else; its next incarnation claims
them by source. Confirmed entries are dropped at once, so only the usage of the last second or so (and
that of crashed callers) is held; the bound keeps a caller that never confirms from growing it forever."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from services.contracts.held_usage import holder_parts
from services.engine.generation import FinishReason, Timings, Usage

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_LEASE_SECONDS = 10.0


@dataclass(slots=True)
class HeldUsage:
    request_id: str
    caller: str
    usage_context: bytes
    model: str
    usage: Usage = field(default_factory=Usage)
    finish_reasons: list[FinishReason] = field(default_factory=list)
    timings: Timings | None = None
    error: str | None = None
    open: bool = True


class HeldUsageStore:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self._held: OrderedDict[str, HeldUsage] = OrderedDict()
        self._max_entries = max_entries
        self.evicted = 0
        self.lease_seconds = lease_seconds
        # Caller → when it was last heard from (a Generate naming it, a ConfirmUsage, a claim).
        self._seen: dict[str, float] = {}
        # With a journal (journal.py): finished entries written (or dropped: None) since it
        # last took them.
        self._journaled = False
        self._changes: dict[str, HeldUsage | None] = {}

    def _record(self, request_id: str, held: HeldUsage | None) -> None:
        if self._journaled:
            self._changes[request_id] = held

    def take_changes(self) -> dict[str, HeldUsage | None]:
        changes, self._changes = self._changes, {}
        return changes

    def return_changes(self, changes: dict[str, HeldUsage | None]) -> None:
        """Changes the journal could not write: kept for its next round (newer ones win)."""
        self._changes = {**changes, **self._changes}

    def restore(self, entries: list[HeldUsage]) -> None:
        """Finished entries from before a restart. Their callers have not been heard from since, so
        their leases count as run out: any gateway may claim them at once. From now on changes are
        kept for the journal."""
        self._journaled = True
        for held in entries:
            self._held.setdefault(held.request_id, held)

    def renew(self, caller: str) -> None:
        if caller:
            self._seen[caller] = time.monotonic()

    def _expired(self, caller: str, now: float) -> bool:
        return now - self._seen.get(caller, 0.0) > self.lease_seconds

    def __len__(self) -> int:
        return len(self._held)

    def open(self, request_id: str, caller: str, usage_context: bytes, model: str) -> None:
        self.renew(caller)
        self._held[request_id] = HeldUsage(request_id, caller, usage_context, model)
        while len(self._held) > self._max_entries:
            evicted_id, _ = self._held.popitem(last=False)
            self._record(evicted_id, None)
            self.evicted += 1
            log.error("unconfirmed usage of request %s evicted: over %d held", evicted_id, self._max_entries)

    def finish(
        self,
        request_id: str,
        usage: Usage,
        finish_reasons: list[FinishReason],
        timings: Timings | None,
        error: str | None,
    ) -> None:
        held = self._held.get(request_id)
        if held is None:
            return
        held.usage, held.finish_reasons, held.timings, held.error = usage, finish_reasons, timings, error
        held.open = False
        self._record(request_id, held)

    def discard(self, request_id: str) -> None:
        """A request refused before it produced anything: it counts nowhere, nothing to bill."""
        self._held.pop(request_id, None)

    def confirm(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            if self._held.pop(request_id, None) is not None:
                self._record(request_id, None)

    def claim_expired(self, claimer: str) -> tuple[list[HeldUsage], int]:
        """(finished entries of callers whose lease ran out, now the claimer's; how many of theirs are
        still open). Handed over at once: a second claimer gets none of them."""
        now = time.monotonic()
        self.renew(claimer)
        finished: list[HeldUsage] = []
        still_open = 0
        holding: set[str] = set()
        for held in self._held.values():
            if held.caller == claimer or not self._expired(held.caller, now):
                continue
            if held.open:
                still_open += 1
                holding.add(held.caller)
            else:
                held.caller = claimer
                finished.append(held)
                self._record(held.request_id, held)
        # Callers gone with nothing left here are forgotten.
        for caller in [c for c in self._seen if c not in holding and c != claimer and self._expired(c, now)]:
            del self._seen[caller]
        return finished, still_open

    def claim(
        self, source: str, exclude_incarnation: str, request_ids: frozenset[str] = frozenset()
    ) -> tuple[list[HeldUsage], int]:
        """(finished entries of the source's other incarnations, how many of theirs are still open); with
        `request_ids`, those requests of the source whatever their incarnation. Claimed entries stay until
        confirmed: a claimer that crashes before recording claims them again."""
        finished: list[HeldUsage] = []
        still_open = 0
        candidates = (self._held[r] for r in request_ids if r in self._held) if request_ids else self._held.values()
        for held in candidates:
            held_source, incarnation = holder_parts(held.caller)
            if held_source != source or (not request_ids and incarnation == exclude_incarnation):
                continue
            if held.open:
                still_open += 1
            else:
                finished.append(held)
        return finished, still_open
