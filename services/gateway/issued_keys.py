"""API keys issued at run time (kept in metering), as this gateway knows them: every key's hashes, kept
current from metering's WatchKeys stream and looked up by the presented secret's SHA-256. While metering
cannot be reached the keys already known keep working; the stream is opened again and starts with every
key, so nothing missed in between survives it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from llmserve.metering.v1 import metering_pb2 as pb
from prometheus_client import Gauge

from services.contracts.metering_client import MeteringClient
from services.gateway.state_file import replace_file

log = logging.getLogger(__name__)

RETRY_SECONDS = 0.5


def _seconds(message: pb.ApiKey, field: str) -> float | None:
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    return value.seconds + value.nanos / 1e9


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    version: int
    secret_sha256: bytes
    expires_at: float | None
    revoked: bool
    allowed_models: frozenset[str]
    previous_secret_sha256: bytes
    previous_valid_until: float | None
    team_id: str = ""
    org_id: str = ""
    role: str = ""
    team_allowed_models: frozenset[str] = frozenset()
    include_cost: bool = False

    @classmethod
    def of(cls, message: pb.ApiKey) -> IssuedKey:
        return cls(
            message.key_id,
            message.version,
            message.secret_sha256,
            _seconds(message, "expires_at"),
            message.HasField("revoked_at"),
            frozenset(message.allowed_models),
            message.previous_secret_sha256,
            _seconds(message, "previous_valid_until"),
            message.team_id,
            message.org_id,
            message.role,
            frozenset(message.team_allowed_models),
            message.include_cost,
        )

    def valid(self, now: float) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


class IssuedKeys:
    """known_file: where the keys last known are kept (hashes only), so a gateway restarted while metering
    cannot be reached still knows them."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        known_file: Path | None = None,
        connected_gauge: Gauge | None = None,
    ) -> None:
        self._clock = clock
        self._by_id: dict[str, IssuedKey] = {}
        self._by_digest: dict[bytes, str] = {}
        self._messages: dict[str, pb.ApiKey] = {}
        self._known_file = known_file
        self._written = b""
        self._gauge = connected_gauge
        self.connected = False
        self.updates = 0
        # Called after each update: any change in metering (a limit, a team) may change who is limited.
        self.on_change: Callable[[], None] | None = None
        self._task: asyncio.Task | None = None
        self._read_known()

    @property
    def count(self) -> int:
        return sum(not k.revoked for k in self._by_id.values())

    def key_id(self, secret: str) -> str | None:
        """The key a secret belongs to, if it is valid now: its current secret, or the one its last
        rotation replaced while the grace period runs."""
        digest = hashlib.sha256(secret.encode()).digest()
        key_id = self._by_digest.get(digest)
        key = self._by_id.get(key_id) if key_id is not None else None
        if key is None:
            return None
        now = self._clock()
        if not key.valid(now):
            return None
        if digest == key.secret_sha256:
            return key_id
        return key_id if key.previous_valid_until is not None and now < key.previous_valid_until else None

    def allows(self, key_id: str, model: str) -> bool:
        """Whether the key may use the model: both its list and its team's allow it (an empty list allows
        any; a key not issued here may use any)."""
        key = self._by_id.get(key_id)
        if key is None:
            return True
        return all(not listed or model in listed for listed in (key.allowed_models, key.team_allowed_models))

    def includes_cost(self, key_id: str) -> bool:
        """Whether every response to this key carries its cost in `usage`."""
        key = self._by_id.get(key_id)
        return key is not None and key.include_cost

    def levels(self, key_id: str) -> tuple[str, ...]:
        """The team and organisation above the key, whose limits its requests also count against."""
        key = self._by_id.get(key_id)
        return () if key is None else tuple(s for s in (key.team_id, key.org_id) if s)

    def administered_org(self, key_id: str) -> str | None:
        """The organisation this key administers (an org_admin key), or None."""
        key = self._by_id.get(key_id)
        return key.org_id if key is not None and key.role == "org_admin" and key.org_id else None

    def apply(self, update: pb.KeysUpdate) -> None:
        if update.full:
            self._by_id, self._by_digest, self._messages = {}, {}, {}
        for message in update.keys:
            key = IssuedKey.of(message)
            old = self._by_id.get(key.key_id)
            if old is not None and old.version >= key.version:
                continue
            if old is not None:
                for digest in (old.secret_sha256, old.previous_secret_sha256):
                    self._by_digest.pop(digest, None)
            self._by_id[key.key_id] = key
            self._messages[key.key_id] = message
            for digest in (key.secret_sha256, key.previous_secret_sha256):
                if digest:
                    self._by_digest[digest] = key.key_id
        self.updates += 1
        self._write_known()
        if self.on_change is not None:
            self.on_change()

    def _read_known(self) -> None:
        path = self._known_file
        if path is None or not path.exists():
            return
        try:
            data = path.read_bytes()
            self.apply(pb.KeysUpdate.FromString(data))
        except (OSError, DecodeError) as error:
            log.warning("ignoring %s: %s", path, error)
            return
        self._written = data

    def _write_known(self) -> None:
        if self._known_file is None:
            return
        keys = [self._messages[k] for k in sorted(self._messages)]
        data = pb.KeysUpdate(full=True, keys=keys).SerializeToString(deterministic=True)
        if data != self._written and replace_file(self._known_file, data):
            self._written = data

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        if self._gauge is not None:
            self._gauge.set(int(connected))

    def start(self, metering: MeteringClient) -> None:
        self._task = asyncio.create_task(self._follow(metering))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self, metering: MeteringClient) -> None:
        while True:
            try:
                async for update in metering.watch_keys():
                    self.apply(update)
                    self._set_connected(True)
            except grpc.aio.AioRpcError as error:
                if self.connected:
                    log.warning("the key watch ended (%s); the keys known keep working", error.code().name)
            except Exception:
                log.exception("the key watch failed; the keys known keep working")
            self._set_connected(False)
            await asyncio.sleep(RETRY_SECONDS)
