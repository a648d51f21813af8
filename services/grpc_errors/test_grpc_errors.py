"""The interceptor against an in-process grpc.aio server on port 0."""

from __future__ import annotations

import grpc
import pytest

from services.grpc_errors import ErrorInterceptor


class NotFound(Exception):
    pass


class SubNotFound(NotFound):
    pass


ERRORS = {"notfound": NotFound("no such thing"), "sub": SubNotFound("a narrower miss"), "bug": KeyError("secret")}


def _raise(name: str) -> None:
    if name in ERRORS:
        raise ERRORS[name]


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    _raise(request.decode())
    return b"ok"


async def stream(request: bytes, context: grpc.aio.ServicerContext):
    yield b"first"
    _raise(request.decode())
    yield b"last"


async def client_stream(requests, context: grpc.aio.ServicerContext) -> bytes:
    async for request in requests:
        _raise(request.decode())
    return b"ok"


async def bidi(requests, context: grpc.aio.ServicerContext):
    async for request in requests:
        yield b"first"
        _raise(request.decode())
        yield b"last"


@pytest.fixture
async def channel():
    server = grpc.aio.server(interceptors=[ErrorInterceptor({NotFound: grpc.StatusCode.NOT_FOUND})])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Svc", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


@pytest.mark.parametrize("kind", ["unary", "stream", "client_stream", "bidi"])
async def test_mapping(channel: grpc.aio.Channel, kind: str) -> None:
    async def call(name: str) -> list[bytes]:
        if kind == "unary":
            return [await channel.unary_unary("/test.Svc/Unary")(name.encode())]
        if kind == "stream":
            return [m async for m in channel.unary_stream("/test.Svc/Stream")(name.encode())]
        if kind == "client_stream":
            return [await channel.stream_unary("/test.Svc/ClientStream")(iter([b"fine", name.encode()]))]
        return [m async for m in channel.stream_stream("/test.Svc/Bidi")(iter([name.encode()]))]

    assert (await call("fine"))[-1] in (b"ok", b"last")
    for name, code, message in [
        ("notfound", grpc.StatusCode.NOT_FOUND, "no such thing"),
        ("sub", grpc.StatusCode.NOT_FOUND, "a narrower miss"),
        ("bug", grpc.StatusCode.INTERNAL, "internal error in /test.Svc/"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(name)
        assert raised.value.code() == code
        assert message in raised.value.details()
        assert "secret" not in raised.value.details()
