"""The engine checks an image's declared size from its header before decoding it, whatever the gateway did."""

import struct
import zlib

import pytest

from services.engine.errors import InvalidRequestError
from services.engine.generation import ImageInput
from services.engine.vllm_adapter.prompts import ImageLimits, _decode_images


def declared_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\0" + b"\0" * ((width + 7) // 8) for _ in range(height)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_declared_dimensions_over_the_limits_are_refused_before_decoding() -> None:
    limits = ImageLimits(max_pixels=10_000, max_side=200)
    with pytest.raises(InvalidRequestError, match="11000x11000"):
        _decode_images(
            [("messages[0].content[1].image_url", ImageInput(declared_png(11000, 11000)[:200], "image/png"))],
            ImageLimits(),
        )
    with pytest.raises(InvalidRequestError, match="at most 10000"):
        _decode_images([("img", ImageInput(declared_png(150, 150), "image/png"))], limits)
    with pytest.raises(InvalidRequestError, match="at most 200 pixels"):
        _decode_images([("img", ImageInput(declared_png(201, 1), "image/png"))], limits)
    [image] = _decode_images([("img", ImageInput(declared_png(100, 100), "image/png"))], limits)
    assert image.size == (100, 100) and image.mode == "RGB"
