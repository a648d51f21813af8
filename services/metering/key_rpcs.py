"""The API key RPCs of the metering service: protobuf in and out of the key store; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from llmserve.metering.v1 import metering_pb2 as pb

from services.metering.key_watch import KeyWatch
from services.metering.keys import KeyRecord
from services.metering.ledger import Ledger


def _stamp(message: Timestamp, seconds: float | None) -> None:
    if seconds is not None:
        message.FromNanoseconds(int(seconds * 1e9))


def key_message(record: KeyRecord, with_hashes: bool = False) -> pb.ApiKey:
    """The key as admins see it; with_hashes adds what a gateway checks a secret against."""
    message = pb.ApiKey(
        key_id=record.key_id,
        name=record.name,
        display_prefix=record.display_prefix,
        allowed_models=list(record.allowed_models),
        metadata=record.metadata,
        version=record.version,
    )
    _stamp(message.created_at, record.created_at)
    for name in ("expires_at", "revoked_at", "previous_valid_until"):
        value = getattr(record, name)
        if value is not None:
            _stamp(getattr(message, name), value)
    if with_hashes:
        message.secret_sha256 = bytes.fromhex(record.secret_sha256)
        if record.previous_secret_sha256:
            message.previous_secret_sha256 = bytes.fromhex(record.previous_secret_sha256)
    return message


def _seconds(message: object, field: str) -> float | None:
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value: Timestamp = getattr(message, field)
    return value.seconds + value.nanos / 1e9


class KeyRpcs:
    _ledger: Ledger
    _keys: KeyWatch

    async def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.aio.ServicerContext) -> pb.IssuedKey:
        record, secret = await self._ledger.create_key(
            request.name,
            _seconds(request, "expires_at"),
            list(request.allowed_models),
            dict(request.metadata),
            request.actor,
        )
        self._keys.poke()
        return pb.IssuedKey(key=key_message(record), secret=secret)

    async def ListKeys(self, request: pb.ListKeysRequest, context: grpc.aio.ServicerContext) -> pb.ListKeysResponse:
        return pb.ListKeysResponse(keys=[key_message(k) for k in await self._ledger.list_keys(request.include_revoked)])

    async def GetKey(self, request: pb.GetKeyRequest, context: grpc.aio.ServicerContext) -> pb.ApiKey:
        return key_message(await self._ledger.get_key(request.key_id))

    async def UpdateKey(self, request: pb.UpdateKeyRequest, context: grpc.aio.ServicerContext) -> pb.ApiKey:
        record = await self._ledger.update_key(
            request.key_id,
            request.actor,
            name=request.name if request.HasField("name") else None,
            expires_at=_seconds(request, "expires_at"),
            clear_expiry=request.clear_expiry,
            allowed_models=list(request.allowed_models) if request.replace_allowed_models else None,
            metadata=dict(request.metadata) if request.replace_metadata else None,
        )
        self._keys.poke()
        return key_message(record)

    async def RotateKey(self, request: pb.RotateKeyRequest, context: grpc.aio.ServicerContext) -> pb.IssuedKey:
        record, secret = await self._ledger.rotate_key(request.key_id, request.grace_seconds, request.actor)
        self._keys.poke()
        return pb.IssuedKey(key=key_message(record), secret=secret)

    async def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.aio.ServicerContext) -> pb.ApiKey:
        record = await self._ledger.revoke_key(request.key_id, request.actor)
        self._keys.poke()
        return key_message(record)

    async def WatchKeys(
        self, request: pb.WatchKeysRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.KeysUpdate]:
        async for full, keys in self._keys.updates():
            yield pb.KeysUpdate(full=full, keys=[key_message(k, with_hashes=True) for k in keys])
