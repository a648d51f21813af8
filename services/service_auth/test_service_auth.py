"""The interceptor against an in-process grpc.aio server on port 0, with real credential files."""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from services.grpc_errors import ErrorInterceptor
from services.service_auth import ADMIN, GATEWAY, AuthInterceptor, Caller, CallerRegistry, ReloadingCallers, read_token
from services.service_auth.provision import ensure_credentials

POLICY = {
    "/test.Svc/Work": frozenset({GATEWAY}),
    "/test.Svc/Stream": frozenset({GATEWAY}),
    "/test.Svc/Read": frozenset({ADMIN}),
}


async def work(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"done"


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"one"
    yield b"two"


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    return ensure_credentials(tmp_path / "credentials").parent


@pytest.fixture
async def served(credentials: Path) -> AsyncIterator[tuple[grpc.aio.Channel, CollectorRegistry]]:
    registry = CollectorRegistry()
    failures = Counter("test_auth_failures", "refused", ["method", "reason"], registry=registry)
    auth = AuthInterceptor(CallerRegistry.from_file(credentials / "callers"), POLICY, failures)
    server = grpc.aio.server(interceptors=[auth, ErrorInterceptor({})])
    handlers = {
        "Work": grpc.unary_unary_rpc_method_handler(work),
        "Read": grpc.unary_unary_rpc_method_handler(work),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Unlisted": grpc.unary_unary_rpc_method_handler(work),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Svc", handlers)])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, registry
    await server.stop(None)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def call(channel: grpc.aio.Channel, method: str, metadata: tuple = ()) -> list[bytes]:
    if method == "Stream":
        return [m async for m in channel.unary_stream(f"/test.Svc/{method}")(b"x", metadata=metadata)]
    return [await channel.unary_unary(f"/test.Svc/{method}")(b"x", metadata=metadata)]


async def test_roles_and_refusals(served, credentials: Path, caplog: pytest.LogCaptureFixture) -> None:
    channel, registry = served
    gateway, admin = read_token(credentials / "gateway.token"), read_token(credentials / "admin.token")
    assert await call(channel, "Work", bearer(gateway)) == [b"done"]
    assert await call(channel, "Stream", bearer(gateway)) == [b"one", b"two"]
    assert await call(channel, "Read", bearer(admin)) == [b"done"]
    caplog.set_level(logging.DEBUG)
    cases = [
        ("Work", (), grpc.StatusCode.UNAUTHENTICATED),
        ("Stream", (), grpc.StatusCode.UNAUTHENTICATED),
        ("Work", bearer("not-a-token"), grpc.StatusCode.UNAUTHENTICATED),
        ("Work", (("authorization", f"Basic {gateway}"),), grpc.StatusCode.UNAUTHENTICATED),
        ("Work", bearer(admin), grpc.StatusCode.PERMISSION_DENIED),
        ("Stream", bearer(admin), grpc.StatusCode.PERMISSION_DENIED),
        ("Read", bearer(gateway), grpc.StatusCode.PERMISSION_DENIED),
        ("Unlisted", bearer(admin), grpc.StatusCode.PERMISSION_DENIED),
    ]
    for method, metadata, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(channel, method, metadata)
        assert refused.value.code() == code, (method, metadata)
    reasons = {"unauthenticated": 4, "permission_denied": 4}
    for reason, count in reasons.items():
        total = sum(
            sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if sample.name == "test_auth_failures_total" and sample.labels["reason"] == reason
        )
        assert total == count
    assert gateway not in caplog.text and admin not in caplog.text
    # Health stays open.
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_credentials_are_private_made_once_and_kept(tmp_path: Path) -> None:
    directory = tmp_path / "credentials"
    callers = ensure_credentials(directory)
    token = read_token(directory / "gateway.token")
    for path in (callers, directory / "gateway.token", directory / "admin.token"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in callers.read_text()
    ensure_credentials(directory)
    assert read_token(directory / "gateway.token") == token
    registry = CallerRegistry.from_file(callers)
    assert registry.identify(token).roles == {GATEWAY}
    assert registry.identify(read_token(directory / "admin.token")).roles == {ADMIN}


@pytest.mark.parametrize("text", ["", "gateway gateway\n", "gateway root " + "a" * 64, "gateway gateway xyz"])
def test_bad_callers_file_stops_the_start(tmp_path: Path, text: str) -> None:
    path = tmp_path / "callers"
    path.write_text(text)
    with pytest.raises(ValueError):
        CallerRegistry.from_file(path)


def test_callers_are_added_rotated_with_a_grace_period_and_removed(tmp_path) -> None:
    from services.service_auth.provision import (
        add_caller,
        ensure_credentials,
        list_callers,
        remove_caller,
        rotate_caller,
    )

    ensure_credentials(tmp_path)
    token = add_caller(tmp_path, "batch", ["generate"])
    assert not (tmp_path / "batch.token").exists(), "an added caller's token is shown once, never stored"
    callers = ReloadingCallers(tmp_path / "callers", check_every_seconds=0)
    assert callers.identify(token) == Caller("batch", frozenset({"generate"}))
    new = rotate_caller(tmp_path, "batch", grace_seconds=60)
    assert callers.identify(token) is not None and callers.identify(new) is not None
    assert CallerRegistry.from_file(tmp_path / "callers").identify(token, now=time.time() + 61) is None
    ensure_credentials(tmp_path)  # init again keeps the added caller
    assert {e.name for e in list_callers(tmp_path)} == {"gateway", "admin", "engine", "batch"}
    remove_caller(tmp_path, "batch")
    assert callers.identify(new) is None and callers.identify(token) is None
    with pytest.raises(ValueError):
        add_caller(tmp_path, "x", ["root"])
