"""Calls the admin routes make to metering (keys, teams, organisations, limits), and metering's refusals
as OpenAI-style errors: the message names the field; 503 when metering cannot be reached."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.contracts.metering_client import MeteringClient
from services.gateway.dependencies import app_state
from services.gateway.errors import ApiError

_T = TypeVar("_T")
KeyAdmin = Annotated[MeteringClient | None, app_state("key_admin")]


def admin_client(client: MeteringClient | None) -> MeteringClient:
    if client is None:
        raise ApiError(404, "Keys, teams and organizations need metering (GATEWAY_METERING_ADDR).", code="keys_off")
    return client


async def call(awaitable: Awaitable[_T], noun: str) -> _T:
    """noun names the resource in the error codes: key_not_found, team_exists, ..."""
    try:
        return await awaitable
    except grpc.aio.AioRpcError as error:
        status, code = {
            grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_value"),
            grpc.StatusCode.NOT_FOUND: (404, f"{noun}_not_found"),
            grpc.StatusCode.ALREADY_EXISTS: (409, f"{noun}_exists"),
        }.get(error.code(), (503, f"{noun}s_unavailable"))
        if status == 503:
            raise ApiError(503, f"Metering cannot be reached to manage {noun}s.", code=code) from error
        detail = error.details() or ""
        raise ApiError(status, detail, param=detail.partition(":")[0] or None, code=code) from error


def stamp(seconds: int) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(datetime.fromtimestamp(seconds, UTC))
    return message


def unix(message: Timestamp, present: bool) -> int | None:
    return message.seconds if present else None


def replace_fields(
    change: object, name: str | None, allowed_models: list[str] | None, metadata: dict[str, str] | None
) -> None:
    """Fills an update request (of a key or a team): the fields given replace the stored ones."""
    if name is not None:
        change.name = name  # type: ignore[attr-defined]
    if allowed_models is not None:
        change.replace_allowed_models = True  # type: ignore[attr-defined]
        change.allowed_models.extend(allowed_models)  # type: ignore[attr-defined]
    if metadata is not None:
        change.replace_metadata = True  # type: ignore[attr-defined]
        change.metadata.update(metadata)  # type: ignore[attr-defined]
