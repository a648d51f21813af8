"""Image parts before they reach the engine: data: URIs decoded, URLs refused unless fetching is on, and
never fetched from non-public addresses or hosts off the allowlist."""

from __future__ import annotations

import base64
import http.server
import ipaddress
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator

import pytest

from services.gateway.errors import ApiError
from services.gateway.openai_api.images import ImagePolicy, _public, load_images
from services.gateway.openai_api.protocol import ChatMessage

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


def message(url: str) -> list[ChatMessage]:
    return [
        ChatMessage.model_validate(
            {
                "role": "user",
                "content": [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": url}}],
            }
        )
    ]


async def refusal(url: str, policy: ImagePolicy = ImagePolicy()) -> ApiError:
    with pytest.raises(ApiError) as refused:
        await load_images(message(url), policy)
    assert refused.value.status == 400 and refused.value.param == "messages[0].content[1].image_url"
    return refused.value


async def test_a_data_uri_becomes_bytes_with_its_media_type() -> None:
    images = await load_images(message("data:image/png;base64," + base64.b64encode(PNG).decode()), ImagePolicy())
    assert images[(0, 1)].data == PNG and images[(0, 1)].media_type == "image/png"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("data:image/png;base64,not base64!", "does not decode"),
        ("data:image/bmp;base64,AAAA", "unsupported media type"),
        ("data:image/png,rawbytes", "base64"),
        ("http://example.com/cat.png", "does not fetch"),
        ("ftp://example.com/cat.png", "does not fetch"),
    ],
)
async def test_bad_images_are_refused_naming_the_part(url: str, words: str) -> None:
    assert words in (await refusal(url)).message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.png",
        "http://localhost:9/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/x.png",
        "http://[::1]:9/x.png",
    ],
)
async def test_fetching_never_reaches_internal_addresses(url: str) -> None:
    assert "non-public" in (await refusal(url, ImagePolicy(fetch=True))).message


async def test_fetching_keeps_to_the_allowlist_and_the_size_limit() -> None:
    off_list = await refusal(
        "http://example.com/x.png", ImagePolicy(fetch=True, allowed_hosts=frozenset({"images.example.org"}))
    )
    assert "allowlist" in off_list.message
    big = "data:image/png;base64," + base64.b64encode(b"x" * 2000).decode()
    assert "larger than" in (await refusal(big, ImagePolicy(max_bytes=1000))).message


class _Images(http.server.BaseHTTPRequestHandler):
    hosts: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        _Images.hosts.append(self.headers.get("Host", ""))
        if self.path == "/cat.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(PNG)
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html></html>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


async def test_a_fetch_allowed_to_reach_a_host_gets_the_image_and_its_limits_hold(image_server: str) -> None:
    """Loopback is allowed here only because the policy says so (the test's server is on 127.0.0.1)."""
    policy = ImagePolicy(fetch=True, allow_private=True, max_redirects=2)
    images = await load_images(message(f"{image_server}/cat.png"), policy)
    assert images[(0, 1)].data == PNG and images[(0, 1)].media_type == "image/png"
    assert "redirects" in (await refusal(f"{image_server}/loop", policy)).message
    assert "unsupported media type" in (await refusal(f"{image_server}/page", policy)).message


def _resolver(names: dict[str, list[str]], answers: int = 100) -> Callable[..., list[tuple]]:
    """A name service that knows only `names`, and answers at most `answers` lookups."""
    asked = []

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        asked.append(host)
        if host not in names or len(asked) > answers:
            raise socket.gaierror(f"{host} is not known here")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in names[host]]

    return getaddrinfo


async def test_a_fetch_connects_to_the_address_it_checked_not_to_a_second_lookup(
    image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`images.test` answers one lookup only, the check's: the request reaches the server anyway, with
    the name in its Host header, so nothing looked the name up again (a rebinding DNS server has no
    second lookup to answer with another address)."""
    port = image_server.rsplit(":", 1)[1]
    monkeypatch.setattr(socket, "getaddrinfo", _resolver({"images.test": ["127.0.0.1"]}, answers=1))
    _Images.hosts.clear()
    images = await load_images(
        message(f"http://images.test:{port}/cat.png"), ImagePolicy(fetch=True, allow_private=True)
    )
    assert images[(0, 1)].data == PNG
    assert _Images.hosts == [f"images.test:{port}"]


async def test_a_name_with_any_non_public_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolver({"mixed.test": ["93.184.215.14", "10.1.2.3"]}))
    assert "non-public" in (await refusal("https://mixed.test/x.png", ImagePolicy(fetch=True))).message


def declared_png(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG header declaring these dimensions (a few KB of real PNG can: 14 KB declared
    11000x11000 and cost the engine 2.6 GB); the size check reads no further."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def as_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


async def test_an_image_declaring_too_many_pixels_or_too_long_a_side_is_refused_from_its_header() -> None:
    policy = ImagePolicy(max_pixels=4_000_000, max_side=4000)
    too_many = await refusal(as_data_uri(declared_png(2500, 2500)), policy)
    assert "2500x2500" in too_many.message and "4000000" in too_many.message
    too_long = await refusal(as_data_uri(declared_png(4001, 10)), policy)
    assert "at most 4000 pixels" in too_long.message
    bomb = await refusal(as_data_uri(declared_png(11000, 11000)), ImagePolicy())
    assert "11000x11000" in bomb.message
    accepted = await load_images(message(as_data_uri(declared_png(2000, 2000))), policy)
    assert accepted[(0, 1)].media_type == "image/png"


async def test_malformed_urls_are_400s_not_500s() -> None:
    for url in ("http://127.0.0.1:99999/x.png", "http://[::1:18766/x.png", "http://exa mple.com\x00/x.png"):
        assert (await refusal(url, ImagePolicy(fetch=True))).status == 400


@pytest.mark.parametrize("address", ["64:ff9b::7f00:1", "2002:7f00:1::1", "224.0.0.1", "ff02::1", "::ffff:10.0.0.1"])
def test_translated_and_multicast_addresses_are_not_public(address: str) -> None:
    assert not _public(ipaddress.ip_address(address))
    assert _public(ipaddress.ip_address("93.184.216.34"))
