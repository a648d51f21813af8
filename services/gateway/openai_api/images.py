"""Images in chat messages (`image_url` parts): `data:` URIs decoded here, and, when enabled, http(s)
URLs the gateway fetches itself within limits, so that the engine gets bytes and fetches nothing.

A fetch goes only to an allowed host (when an allowlist is set), never to a loopback, link-local,
private or otherwise non-public address unless explicitly allowed (checked for every address the name
resolves to, at every redirect, and the connection goes to an address checked), follows a bounded number
of redirects, and stops at the size and time limits. An image's dimensions are read from its header
(nothing is decoded here) and refused above the pixel and side limits: a few KB of PNG can declare
100 M pixels, which the model's processor would decode into gigabytes. What fails becomes a 400 naming
the part (`messages[i].content[j].image_url`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
from llmserve.engine.v1 import engine_pb2 as pb
from PIL import Image, UnidentifiedImageError

from services.gateway.errors import ApiError
from services.gateway.openai_api.protocol import ChatMessage, ImagePart

MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})


@dataclass(frozen=True)
class ImagePolicy:
    max_bytes: int = 8 * 1024 * 1024
    fetch: bool = False
    # Empty: any public host.
    allowed_hosts: frozenset[str] = frozenset()
    allow_private: bool = False
    timeout_seconds: float = 10.0
    max_redirects: int = 3
    max_pixels: int = 16 * 1024 * 1024
    max_side: int = 8192


# Address translation and multicast ranges that `is_global` lets through: NAT64 and 6to4 addresses
# carry an IPv4 address (possibly a private one) inside.
_NOT_FETCHED = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32"))


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if not address.is_global or address.is_multicast:
        return False
    return not any(address.version == net.version and address in net for net in _NOT_FETCHED)


def check_dimensions(data: bytes, policy: ImagePolicy, param: str) -> None:
    """Reads the image's declared size from its header (no pixel is decoded) and refuses it above the limits."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise _refuse(param, f"the image declares too many pixels ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _refuse(param, "the image could not be decoded: it is not a PNG, JPEG, WebP or GIF image") from exc
    if width > policy.max_side or height > policy.max_side:
        raise _refuse(param, f"the image is {width}x{height}; each side may be at most {policy.max_side} pixels")
    if width * height > policy.max_pixels:
        raise _refuse(
            param, f"the image is {width}x{height} = {width * height} pixels; at most {policy.max_pixels} are accepted"
        )


def _refuse(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_image")


def _media_type(value: str, param: str) -> str:
    media = value.split(";", 1)[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise _refuse(
            param, f"unsupported media type {media or '(none)'!r}; send one of {', '.join(sorted(MEDIA_TYPES))}"
        )
    return media


def _from_data_uri(url: str, policy: ImagePolicy, param: str) -> pb.Image:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise _refuse(param, "a data: URI must be `data:<media type>;base64,<data>`")
    media = _media_type(header.removeprefix("data:").removesuffix(";base64"), param)
    if len(payload) > policy.max_bytes * 4 // 3 + 4:
        raise _refuse(param, f"the image is larger than {policy.max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refuse(param, f"the base64 data does not decode ({exc})") from exc
    if not data:
        raise _refuse(param, "the image is empty")
    check_dimensions(data, policy, param)
    return pb.Image(data=data, media_type=media)


@dataclass(frozen=True)
class _Target:
    """Where one fetch connects: the address checked, not the name, so that a second lookup (DNS
    rebinding) cannot send the request somewhere the check did not see."""

    url: str
    host_header: str
    hostname: str


async def _checked_target(url: str, policy: ImagePolicy, param: str) -> _Target:
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError as exc:
        raise _refuse(param, f"the URL is malformed ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refuse(param, "only data:, http: and https: URLs are accepted")
    host = parts.hostname.lower()
    if policy.allowed_hosts and host not in policy.allowed_hosts:
        raise _refuse(param, f"the host {host!r} is not on this gateway's image host allowlist")
    port = explicit_port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _refuse(param, f"the host {host!r} does not resolve") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not policy.allow_private and not all(_public(address) for address in addresses):
        raise _refuse(param, f"the host {host!r} resolves to a non-public address; images are not fetched from there")
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    pinned = parts._replace(netloc=f"{literal}:{port}").geturl()
    host_header = host if explicit_port is None else f"{host}:{explicit_port}"
    return _Target(url=pinned, host_header=host_header, hostname=host)


async def _fetch(url: str, policy: ImagePolicy, param: str) -> pb.Image:
    if not policy.fetch:
        raise _refuse(param, "this gateway does not fetch image URLs; send the image as a data: URI")
    async with httpx.AsyncClient(timeout=policy.timeout_seconds, follow_redirects=False, trust_env=False) as client:
        for _ in range(policy.max_redirects + 1):
            target = await _checked_target(url, policy, param)
            try:
                # TLS still verifies the certificate against the name (sni_hostname), not the address.
                request = client.build_request(
                    "GET",
                    target.url,
                    headers={"Host": target.host_header},
                    extensions={"sni_hostname": target.hostname},
                )
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    return await _image_from(response, policy, param)
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                raise _refuse(param, f"fetching the image failed ({exc.__class__.__name__})") from exc
    raise _refuse(param, f"more than {policy.max_redirects} redirects")


async def _image_from(response: httpx.Response, policy: ImagePolicy, param: str) -> pb.Image:
    if response.status_code != 200:
        raise _refuse(param, f"fetching the image answered HTTP {response.status_code}")
    media = _media_type(response.headers.get("content-type", ""), param)
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > policy.max_bytes:
            raise _refuse(param, f"the image is larger than {policy.max_bytes} bytes")
    check_dimensions(bytes(data), policy, param)
    return pb.Image(data=bytes(data), media_type=media)


async def load_images(messages: list[ChatMessage], policy: ImagePolicy) -> dict[tuple[int, int], pb.Image]:
    """Every image part's bytes, by (message index, part index)."""
    images: dict[tuple[int, int], pb.Image] = {}
    fetches: dict[tuple[int, int], tuple[str, str]] = {}
    for i, message in enumerate(messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if isinstance(part, ImagePart):
                param = f"messages[{i}].content[{j}].image_url"
                if part.image_url.url.startswith("data:"):
                    images[(i, j)] = _from_data_uri(part.image_url.url, policy, param)
                else:
                    fetches[(i, j)] = (part.image_url.url, param)
    if fetches:
        fetched = await asyncio.gather(*(_fetch(url, policy, param) for url, param in fetches.values()))
        images.update(zip(fetches, fetched))
    return images
